"""Checks on the output directory that can be made before MPI starts.

``psgd run`` writes ``config.yaml``, ``metrics.jsonl``, ``summary.json``, the model and its
checkpoints into one directory; a run that cannot create or write it must be refused before
launch, in one line, not after every rank has built its problem.
"""

from __future__ import annotations

import os
import tempfile

from .errors import ConfigError


def check_output_dir(path) -> str:
    """Make sure ``path`` is, or can be created as, a writable directory; return it absolute.

    Nothing is created: the nearest existing ancestor must be a directory in which a file can
    be created (tried with a temporary file, removed at once, because permission bits do not
    tell for root, read-only mounts or full quotas). Raises ConfigError naming the path.
    """
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ConfigError(f"output.dir: got {path!r}; allowed: a directory path")
    full = os.path.abspath(os.path.expanduser(os.fspath(path)))
    probe = full
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        what = ("is not a directory" if probe == full
                else f"is under {probe}, which is not a directory")
        raise ConfigError(f"output.dir: {full} {what}; allowed: a writable directory "
                          "(set output.dir or --out)")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".psgd-write-check-", dir=probe)
    except OSError as exc:
        where = "" if probe == full else f" (nearest existing directory {probe})"
        raise ConfigError(f"output.dir: {full} is not writable{where}: "
                          f"{exc.strerror or exc}; allowed: a writable directory "
                          "(set output.dir or --out)") from None
    os.close(fd)
    os.unlink(tmp)
    return full
