"""Whole lines from a child process's stdout, with a timeout: the fuzz harnesses' protocol.

Why not ``select`` on the pipe and then ``readline()``: a buffered readline may pull more
than one line out of the pipe, and select, which sees only the pipe, then never reports the
lines left in the buffer. A harness waiting that way took a child that had already answered
for a hung one, or for one that died before its first case, whenever two lines happened to
arrive in one read (under load, now and then). Here the bytes are read raw and split here.
"""

from __future__ import annotations

import os
import select
import time


class LineReader:
    """``readline(timeout)``: the next line (str, with its newline), "" at end of file, or None
    if no whole line arrived within ``timeout`` seconds."""

    def __init__(self, stream):
        self.fd = stream.fileno()  # (never read through ``stream`` itself again)
        self.pending = b""
        self.eof = False

    def readline(self, timeout: float):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            if self.eof:
                rest, self.pending = self.pending, b""
                return rest.decode("utf-8", "replace")
            left = max(deadline - time.monotonic(), 0.0)  # (0: what is there already)
            if not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 65536)
            if chunk:
                self.pending += chunk
            else:
                self.eof = True
        line, _, self.pending = self.pending.partition(b"\n")
        return line.decode("utf-8", "replace") + "\n"
