"""psgd: a parameter server for distributed optimization with compressed gradients on MPI."""

import os as _os

__version__ = "0.1.0"

# Installed, server/ and workers/ live inside the package (psgd.server, psgd.workers).
# Imported from a source checkout (e.g. `python -m psgd` run in the repository root) they
# sit beside psgd/: let the package find them there too, so the checkout behaves alike.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if all(_os.path.exists(_os.path.join(_root, p)) for p in ("setup.py", "server", "workers")) \
        and not _os.path.isdir(_os.path.join(_os.path.dirname(__file__), "server")):
    __path__.append(_root)
