"""Run outputs: metrics.jsonl (one object per logged step), progress lines, summary.json.

Bits are counted by the server from the buffers that actually crossed MPI, headers
included: ``bits_up`` every byte received from workers, ``bits_down`` every byte sent
to them. Progress lines are plain lines (no carriage returns), so a SLURM log reads well.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from .rundir import AppendFile, atomic_write, write_error


def fmt_bits(bits: float) -> str:
    for unit, scale in (("Gb", 1e9), ("Mb", 1e6), ("kb", 1e3)):
        if bits >= scale:
            return f"{bits / scale:.3f} {unit}"
    return f"{bits:.0f} b"


class Metrics:
    """Evaluates the model on rank 0 every ``log_every`` server updates and records it."""

    def __init__(self, ctx, out_dir: str, stream=None, resume: bool = False):
        self.ctx = ctx
        self.log_every = ctx.cfg["run"]["log_every"]
        self.iterations = ctx.cfg["run"]["iterations"]
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.stream = stream or sys.stdout
        self.t0 = time.perf_counter()
        self.time_offset = 0.0
        self.last_step = None
        self.last = None
        # one record per write, fsync at checkpoints and at the end (psgd.rundir.AppendFile)
        self.file = AppendFile(self.path, truncate=not resume)

    def position(self) -> tuple:
        """Where the metrics stand, for a checkpoint: (position, the file's bytes so far)."""
        self.file.sync()
        return ({"offset": self.file.tell(), "time_s": self.elapsed(), "last": self.last},
                self.file.read())

    def restore(self, pos: dict, data: bytes) -> None:
        """Continue from a checkpoint: the file becomes exactly the bytes it had then (never
        padded, whatever happened to it since), and the clock goes on from its time."""
        if len(data) != pos["offset"]:
            raise ValueError(f"metrics position {pos['offset']} but {len(data)} bytes saved")
        self.file.close()
        try:
            atomic_write(self.path, data)
        except OSError as exc:
            raise write_error(self.path, exc, "the checkpoint holds its records") from None
        self.file = AppendFile(self.path, truncate=False)
        self.time_offset = pos["time_s"]
        self.t0 = time.perf_counter()
        self.last = pos["last"]
        self.last_step = None if self.last is None else self.last["step"]

    def elapsed(self) -> float:
        return self.time_offset + time.perf_counter() - self.t0

    def evaluate(self, x) -> dict:
        ctx = self.ctx
        smooth, grad = ctx.ps.global_objective.value_and_grad(x)
        loss = float(smooth + ctx.ps.reg.value(x))
        if ctx.has_l1:
            # the prox-gradient mapping norm: zero exactly at the composite optimum
            step = ctx.hyper.gamma if ctx.consts.L is None else 1.0 / ctx.consts.L
            gnorm = float(np.linalg.norm(x - ctx.prox(x - step * grad, step)) / step)
        else:
            gnorm = float(np.linalg.norm(grad))
        subopt = None if ctx.f_star is None else loss - ctx.f_star  # null where f* is unknown
        return {"loss": loss, "subopt": subopt, "grad_norm": gnorm}

    def log(self, server, force=False):
        """Record the current model if it is a logging step; return the record or None."""
        k = server.state.step
        if k == self.last_step or not (force or k % self.log_every == 0):
            return None
        rec = {"step": k, "time_s": round(self.elapsed(), 6), **self.evaluate(server.state.x),
               "bits_up": 8 * server.counters["bytes_up"],
               "bits_down": 8 * server.counters["bytes_down"],
               "staleness_max": max(server.staleness, default=0)}
        self.file.write(json.dumps(rec) + "\n")
        self.last_step, self.last = k, rec
        subopt = "n/a" if rec["subopt"] is None else f"{rec['subopt']:.3e}"
        print(f"step {k:>7}/{self.iterations}  subopt {subopt}  loss {rec['loss']:.9e}  "
              f"bits_up {fmt_bits(rec['bits_up'])}  bits_down {fmt_bits(rec['bits_down'])}  "
              f"stale<= {rec['staleness_max']}  {rec['time_s']:.1f} s",
              file=self.stream, flush=True)
        return rec

    def close(self):
        self.file.close()


def versions() -> dict:
    import mpi4py
    import scipy
    from mpi4py import MPI

    import psgd
    from psgd import kernels

    return {"psgd": psgd.__version__, "python": sys.version.split()[0], "numpy": np.__version__,
            "scipy": scipy.__version__, "mpi4py": mpi4py.__version__,
            "mpi": " ".join(MPI.Get_library_version().split()[:3]),
            "kernels": "cython" if kernels.HAVE_CYTHON else "numpy"}


def json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def write_json(path: str, obj: dict) -> None:
    """Write atomically (temporary file, fsync, rename): a reader never sees half a file."""
    atomic_write(path, json_bytes(obj))
