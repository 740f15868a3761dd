"""The project's exceptions.

Every error a user can cause has its own small class so callers (the CLI, the
server loop, tests) can tell a bad config from a corrupted message from a
run-time failure, and so messages stay one line: what was found, what is allowed.
"""


class PsgdError(Exception):
    """Base class of every psgd error."""


class ConfigError(PsgdError, ValueError):
    """A config key has a bad value, is unknown, or is missing (CLI exit 2)."""


class WireFormatError(PsgdError, ValueError):
    """A buffer is not a valid psgd message (bad header, length or payload)."""


class DataFormatError(PsgdError, ValueError):
    """A data file cannot be read (names the file and, where known, the line)."""


class UnknownComponentError(ConfigError):
    """A compressor, algorithm or problem name that is not registered."""


class RunError(PsgdError, RuntimeError):
    """A run-time failure of the distributed job (names the rank and why)."""
