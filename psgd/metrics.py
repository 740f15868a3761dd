"""Run outputs: metrics.jsonl (one object per logged step), progress lines, summary.json.

Bits are counted by the server from the buffers that actually crossed MPI, headers
included: ``bits_up`` every byte received from workers, ``bits_down`` every byte sent
to them; ``payload_bits_up`` / ``payload_bits_down`` count only the compressors' payloads
(without the 32-byte envelope and the 8-byte codec header, one per layer for
``block_size: layer``, with its length prefixes). ``epoch`` is the number of
samples the applied gradients were computed on, over the dataset size (for problems
without samples, full passes over every worker's f_i). ``rel_subopt`` is
(f - f*)/(f(x0) - f*) and ``dist2`` is ||x - x*||^2/||x0 - x*||^2, where f* and x* are known.
Progress lines are plain lines (no carriage returns), so a SLURM log reads well.

:meth:`Metrics.check` runs after every update: ``run.target`` is tested on the exact loss
of every iterate (one evaluation of f per update, only when a target is set), and a
non-finite model, or a loss above f(x0) + DIVERGED (|f(x0)| + 1), ends the run as failed.
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


#: a loss this many times |f(x0)| + 1 above f(x0) counts as divergence
DIVERGED = 1e6
#: the cumulative counters every record carries (Metrics.counts)
COUNT_KEYS = ("bits_up", "bits_down", "payload_bits_up", "payload_bits_down", "epoch")


def squared_distance(a, b, chunk: int = 1 << 16) -> float:
    """||a - b||^2 a chunk at a time: no d-sized temporary on the server."""
    total = 0.0
    for lo in range(0, a.size, chunk):
        u = a[lo:lo + chunk] - b[lo:lo + chunk]
        total += float(u @ u)
    return total


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
        x0 = ctx.x0
        self.f0 = float(ctx.ps.loss(x0))
        self.gap0 = None if ctx.f_star is None else self.f0 - ctx.f_star
        self.dist0 = None if ctx.x_star is None else squared_distance(x0, ctx.x_star)
        #: a loss above this counts as divergence
        self.loss_bound = self.f0 + DIVERGED * (abs(self.f0) + 1.0)
        #: the step at which the run diverged (a failure a smaller step size may cure), or None
        self.diverged_at = None
        self.target = ctx.cfg["run"]["target"]
        self.extra_keys = []  # the problem's own metrics, as evaluate last found them
        #: the first update at which run.target held: step, time and bits then
        self.reached = None

    def position(self) -> tuple:
        """Where the metrics stand, for a checkpoint: (position, the file's bytes so far)."""
        self.file.sync()
        return ({"offset": self.file.tell(), "time_s": self.elapsed(), "last": self.last,
                 "reached": self.reached}, self.file.read())

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
        self.reached = pos.get("reached")

    def elapsed(self) -> float:
        return self.time_offset + time.perf_counter() - self.t0

    def evaluate(self, x) -> dict:
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging x is an outcome
            return self._evaluate(x)

    def _evaluate(self, x) -> dict:
        ctx = self.ctx
        objective = ctx.ps.global_objective
        if ctx.has_l1:
            smooth, grad = objective.value_and_grad(x)
            # the prox-gradient mapping norm: zero exactly at the composite optimum
            step = ctx.hyper.gamma if ctx.consts.L is None else 1.0 / ctx.consts.L
            gnorm = float(np.linalg.norm(x - ctx.prox(x - step * grad, step)) / step)
        else:
            smooth, gnorm = objective.value_and_grad_norm(x)
        loss = float(smooth + ctx.ps.reg.value(x))
        subopt = None if ctx.f_star is None else loss - ctx.f_star  # null where f* is unknown
        rec = {"loss": loss, "subopt": subopt, "grad_norm": gnorm}
        if self.gap0:
            rec["rel_subopt"] = subopt / self.gap0
        if self.dist0:
            rec["dist2"] = squared_distance(x, ctx.x_star) / self.dist0
        extra = ctx.ps.evaluate(x)  # the problem's own metrics (test accuracy, ...)
        self.extra_keys = [k for k in extra if k not in rec]
        rec.update({k: extra[k] for k in self.extra_keys})
        return rec

    def check(self, server):
        """After every update: (status, reason) when the run must end, else None."""
        with np.errstate(over="ignore", invalid="ignore"):  # overflow here is the verdict
            return self._check(server)

    def _check(self, server):
        x = server.state.x
        if not np.isfinite(np.dot(x, x)):
            return "failed", f"the model holds NaN or Inf after step {server.state.step}"
        if self.target is None or server.peers is not None:
            return None  # sharded servers test the target at logged steps (check_record)
        loss = float(self.ctx.ps.loss(x))
        if self.diverged(loss):
            return "failed", self._divergence(loss, server.state.step)
        if loss - self.ctx.f_star <= self.target:
            return self._reach(server.state.step, round(self.elapsed(), 6), self.counts(server))
        return None

    def check_record(self, rec):
        """At a logged step: divergence, and (sharded servers) the target."""
        if self.diverged(rec["loss"]):
            return "failed", self._divergence(rec["loss"], rec["step"])
        if self.target is not None and self.reached is None and rec["subopt"] <= self.target:
            return self._reach(rec["step"], rec["time_s"], {k: rec[k] for k in COUNT_KEYS})
        return None

    def _reach(self, step, time_s, counts):
        """Record the first step at which the target held; the run has converged."""
        self.reached = {"target": self.target, "step": step, "time_s": time_s, **counts}
        return "converged", None

    def diverged(self, loss: float) -> bool:
        return not np.isfinite(loss) or loss > self.loss_bound

    def _divergence(self, loss, step):
        self.diverged_at = step
        return (f"the loss is {loss:.3g} at step {step}, above f(x0) + {DIVERGED:g} (|f(x0)| + 1) "
                f"= {self.loss_bound:.3g}")

    @staticmethod
    def counts(server) -> dict:
        """The cumulative counters a record carries (bits, payload bits, epochs)."""
        c = server.total_counters()
        return {"bits_up": 8 * c["bytes_up"], "bits_down": 8 * c["bytes_down"],
                "payload_bits_up": 8 * c["payload_up"], "payload_bits_down": 8 * c["payload_down"],
                "epoch": round(server.epochs, 9)}

    def log(self, server, force=False):
        """Record the current model if it is a logging step; return the record or None."""
        k = server.state.step
        if k == self.last_step or not (force or k % self.log_every == 0):
            return None
        rec = {"step": k, "time_s": round(self.elapsed(), 6), **self.evaluate(server.model()),
               **self.counts(server), "staleness_max": max(server.staleness, default=0)}
        self.file.write(json.dumps(rec) + "\n")
        self.last_step, self.last = k, rec
        subopt = "n/a" if rec["subopt"] is None else f"{rec['subopt']:.3e}"
        print(f"step {k:>7}/{self.iterations}  subopt {subopt}  loss {rec['loss']:.9e}  "
              f"bits_up {fmt_bits(rec['bits_up'])}  bits_down {fmt_bits(rec['bits_down'])}  "
              f"stale<= {rec['staleness_max']}  {rec['time_s']:.1f} s"
              + "".join(f"  {key} {rec[key]:.4g}" for key in self.extra_keys
                        if isinstance(rec.get(key), (int, float))),
              file=self.stream, flush=True)
        return rec

    def close(self):
        self.file.close()


def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MiB (Linux VmHWM; None where unknown). Not
    ru_maxrss: Linux keeps that across exec, so a rank started by a large parent reports
    the parent's peak."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


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
