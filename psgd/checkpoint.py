"""Checkpoints: a consistent cut of the whole job, committed atomically.

Layout in the output directory::

    checkpoints/step-000120/server.npz      server + algorithm state, counters, metrics bytes
    checkpoints/step-000120/server-1.npz    server 1's (run.servers > 1: one file per server)
    checkpoints/step-000120/worker-3.npz    each worker's memory, RNG states, sequence numbers
    checkpoints/latest.json                 the commit record: {"step": 120, "previous": 95}

A checkpoint is taken when no message is in flight: the server stops replying until
every worker has reported (in sync mode that is every step boundary), asks each worker
to write its file (CKPT -> ACK), writes its own, and only then replaces latest.json
(write to a temporary file, fsync, rename). A crash or a full disk at any moment leaves
the previous checkpoint as the one latest.json names. The last two committed checkpoints
are kept, so a damaged latest one (a bad disk block, a truncated copy) can be fallen back
from: see :func:`verify`.

A checkpoint file knows what it is: its place says it (DIR/checkpoints/step-N/worker-J.npz
is worker J's state at step N of the run DIR/run.json names), and :func:`save_arrays`
records that identity and a SHA-256 of the arrays inside the file. :func:`load_arrays`
checks both against the place it reads from, so a damaged, moved or swapped file is
refused in one line naming it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import shutil

import numpy as np

from .errors import RunError
from .rundir import atomic_write, read_identity

LATEST = "latest.json"
META = "_meta"
_PLACE = re.compile(r"step-(\d+)[/\\](server(?:-(\d+))?|worker-(\d+))\.npz$")


def root(out_dir: str) -> str:
    return os.path.join(out_dir, "checkpoints")


def step_dir(out_dir: str, step: int) -> str:
    return os.path.join(root(out_dir), f"step-{step:09d}")


def _atomic_write_bytes(path: str, data: bytes) -> None:
    atomic_write(path, data)


def _place(path: str) -> dict:
    """The identity a checkpoint file at ``path`` must carry ({} for any other file)."""
    m = _PLACE.search(os.path.abspath(path))
    if not m:
        return {}
    out_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(path))))
    try:
        ident = read_identity(out_dir)
    except Exception:  # noqa: BLE001 - an unreadable run.json is reported where it is read
        ident = None
    place = {"run_id": ident and ident["run_id"], "step": int(m.group(1)),
             "worker": None if m.group(4) is None else int(m.group(4))}
    if m.group(3) is not None:  # server s > 0 of a sharded run (server.npz is server 0)
        place["server"] = int(m.group(3))
    return place


def _checksum(arrays: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_arrays(path: str, arrays: dict) -> None:
    """``np.savez`` to a temporary file, fsync, then rename: never half-written.

    The file also holds its identity (from its place) and the checksum of its arrays.
    """
    arrays = {k: np.asarray(v) for k, v in arrays.items() if v is not None}
    meta = {**_place(path), "sha256": _checksum(arrays)}
    buf = io.BytesIO()
    np.savez(buf, **arrays, **{META: np.array(json.dumps(meta))})
    _atomic_write_bytes(path, buf.getvalue())


def _who(meta) -> str:
    if meta.get("worker") is not None:
        return f"worker {meta['worker']}'s"
    return f"server {meta['server']}'s" if meta.get("server") else "the server's"


def load_arrays(path: str) -> dict:
    """The arrays of a file :func:`save_arrays` wrote: RunError naming it if it is damaged,
    missing, or not the file its place says (another step, worker or run)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop(META))) if META in arrays else None
    except FileNotFoundError:
        raise RunError(f"checkpoint file {path} is missing") from None
    except Exception as exc:  # noqa: BLE001 - zip, npy and JSON errors alike: damaged
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RunError(f"checkpoint file {path} is damaged ({why})") from None
    if meta is None:
        raise RunError(f"checkpoint file {path} has no identity record (an older psgd's?)")
    if meta.get("sha256") != _checksum(arrays):
        raise RunError(f"checkpoint file {path} is damaged (checksum mismatch)")
    want = _place(path)
    if want and (want["worker"], want.get("server")) != (meta.get("worker"), meta.get("server")):
        raise RunError(f"checkpoint file {path} holds {_who(meta)} state, not "
                       f"{_who(want)} (files swapped or renamed?)")
    for key in ("step", "run_id") if want else ():
        if want[key] != meta.get(key):
            raise RunError(f"checkpoint file {path} belongs to {key.replace('_id', '')} "
                           f"{meta.get(key)}, not {want[key]} (copied from elsewhere?)")
    return arrays


def state_arrays(state, prefix: str) -> dict:
    """An algorithm state dataclass as ``{prefix + field: array}``, nested ones dotted.

    The loops checkpoint whatever an algorithm declares without naming its fields; None
    fields (unused by this configuration) are left out.
    """
    out = {}
    for f in dataclasses.fields(state):
        value, key = getattr(state, f.name), prefix + f.name
        if value is None:
            continue
        if dataclasses.is_dataclass(value):
            out.update(state_arrays(value, key + "."))
        else:
            out[key] = np.asarray(value)
    return out


def restore_state(state, arrays: dict, prefix: str) -> None:
    """Set every field of ``state`` found in ``arrays`` (the inverse of state_arrays)."""
    for f in dataclasses.fields(state):
        value, key = getattr(state, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            restore_state(value, arrays, key + ".")
        elif key in arrays:
            saved = arrays[key]
            if isinstance(value, (bool, int, float)):  # scalars come back as 0-d arrays
                saved = type(value)(saved)
            setattr(state, f.name, saved)


def rng_state(rng: np.random.Generator) -> np.ndarray:
    return np.array(json.dumps(rng.bit_generator.state))


def set_rng_state(rng: np.random.Generator, saved) -> None:
    rng.bit_generator.state = json.loads(str(saved))


def commit(out_dir: str, step: int) -> None:
    """Make step-<step> the latest checkpoint, keep the one before it, remove older ones."""
    prev = latest(out_dir)
    keep = {step} | ({prev} if prev is not None and prev != step else set())
    record = {"step": step, "dir": os.path.basename(step_dir(out_dir, step)),
              "previous": prev if prev != step else None}
    _atomic_write_bytes(os.path.join(root(out_dir), LATEST), json.dumps(record).encode())
    names = {os.path.basename(step_dir(out_dir, s)) for s in keep}
    for name in os.listdir(root(out_dir)):
        if name.startswith("step-") and name not in names:
            shutil.rmtree(os.path.join(root(out_dir), name), ignore_errors=True)


def write_error(out_dir: str, step: int, exc: OSError, who: str = "") -> RunError:
    """The one-line error for a checkpoint that could not be written (full disk, ...)."""
    prev = latest(out_dir)
    kept = f"step {prev}" if prev is not None else "none"
    return RunError(f"{who}checkpoint at step {step} could not be written "
                    f"({exc.strerror or exc}); the previous checkpoint ({kept}) is intact")


def _record(out_dir: str) -> dict | None:
    path = os.path.join(root(out_dir), LATEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as fh:
            rec = json.load(fh)
        int(rec["step"])
        return rec
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunError(f"checkpoint record {path} is unreadable: {exc}") from None


def latest(out_dir: str) -> int | None:
    """The committed checkpoint step in out_dir, or None."""
    rec = _record(out_dir)
    return None if rec is None else int(rec["step"])


def candidates(out_dir: str) -> list:
    """The committed checkpoints to resume from, newest first (the latest and the one before)."""
    rec = _record(out_dir)
    if rec is None:
        return []
    prev = rec.get("previous")
    return [int(rec["step"])] + ([int(prev)] if isinstance(prev, int) else [])


def rank_file(out_dir: str, step: int, role: str = "server", index: int = 0) -> str:
    """The file a rank writes in checkpoint ``step``: server.npz (server 0), server-s.npz
    (server s of a sharded run), worker-j.npz."""
    if role == "worker":
        name = f"worker-{index}.npz"
    else:
        name = "server.npz" if index == 0 else f"server-{index}.npz"
    return os.path.join(step_dir(out_dir, step), name)


def verify(out_dir: str, steps: list, role: str = "server", index: int = 0) -> list:
    """For each candidate step, None if this rank's file is usable, else the one-line reason."""
    found = []
    for step in steps:
        try:
            load_arrays(rank_file(out_dir, step, role, index))
            found.append(None)
        except RunError as exc:
            found.append(str(exc))
    return found
