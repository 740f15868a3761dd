"""The stale-synchronous gate (Petuum Bosen's SSP), as a plain object with no MPI.

Every worker is either *computing* on the model version it was last sent, or *waiting*
(its message has arrived and is queued). An update applies every queued message at once
and is allowed only if afterwards no computing worker is more than ``tau`` versions
behind: ``k + 1 - v_j <= tau``. Only the workers whose messages were applied get the new
model, so a fast worker is held back while a slow one is too far behind. Hence every
applied message has staleness ``k - v <= tau``, and ``tau = 0`` is the synchronous
algorithm exactly (an update needs every worker's fresh message).
"""

from __future__ import annotations

import numpy as np


class StalenessGate:
    def __init__(self, n: int, tau: int):
        self.n = n
        self.tau = tau
        self.sent_version = np.zeros(n, dtype=np.int64)  # v_j: the version j computes on
        self.sent_at = np.zeros(n)                        # when j was sent it (monotonic s)
        self.computing = np.zeros(n, dtype=bool)

    def sent(self, j: int, version: int, now: float) -> None:
        """Worker j was sent model ``version``: it is computing from now on."""
        self.sent_version[j] = version
        self.sent_at[j] = now
        self.computing[j] = True

    def arrived(self, j: int) -> None:
        """Worker j's message arrived: it waits until an update applies it."""
        self.computing[j] = False

    def may_update(self, step: int, queued: int) -> bool:
        """Whether the ``queued`` messages may be applied as update ``step + 1``."""
        if not queued:
            return False
        behind = self.sent_version[self.computing]
        return behind.size == 0 or (step + 1 - behind.min()) <= self.tau

    def staleness(self, version: int, step: int) -> int:
        """The staleness of a message computed at ``version`` applied at ``step``."""
        return step - version

    def silent(self, now: float, timeout: float):
        """The first computing worker silent for more than ``timeout`` s, or None."""
        late = np.flatnonzero(self.computing & (now - self.sent_at > timeout))
        return int(late[0]) if late.size else None

    def any_computing(self) -> bool:
        return bool(self.computing.any())
