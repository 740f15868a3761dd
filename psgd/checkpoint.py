"""Checkpoints: a consistent cut of the whole job, committed atomically.

Layout in the output directory::

    checkpoints/step-000120/server.npz      server + algorithm state, counters, metrics position
    checkpoints/step-000120/worker-3.npz    each worker's memory, RNG states, sequence numbers
    checkpoints/latest.json                 the commit record: {"step": 120, "dir": "step-000120"}

A checkpoint is taken when no message is in flight: the server stops replying until
every worker has reported (in sync mode that is every step boundary), asks each worker
to write its file (CKPT -> ACK), writes its own, and only then replaces latest.json
(write to a temporary file, fsync, rename). A crash or a full disk at any moment leaves
the previous checkpoint as the one latest.json names; older step directories are
removed only after the new commit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np

from .errors import ConfigError, RunError

LATEST = "latest.json"
#: config sections a resumed run must share with the checkpointed one
FROZEN = ("seed", "problem", "data", "algorithm", "compressor")
FROZEN_RUN = ("mode", "max_staleness", "downlink")


def root(out_dir: str) -> str:
    return os.path.join(out_dir, "checkpoints")


def step_dir(out_dir: str, step: int) -> str:
    return os.path.join(root(out_dir), f"step-{step:09d}")


def _atomic_write_bytes(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_arrays(path: str, arrays: dict) -> None:
    """``np.savez`` to a temporary file, fsync, then rename: never half-written."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in arrays.items() if v is not None})
    _atomic_write_bytes(path, buf.getvalue())


def load_arrays(path: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise RunError(f"cannot read checkpoint file {path}: {exc}") from None


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
    """Make step-<step> the latest checkpoint, then remove the older ones."""
    _atomic_write_bytes(os.path.join(root(out_dir), LATEST),
                        json.dumps({"step": step, "dir": os.path.basename(step_dir(out_dir, step))}).encode())
    keep = os.path.basename(step_dir(out_dir, step))
    for name in os.listdir(root(out_dir)):
        if name.startswith("step-") and name != keep:
            shutil.rmtree(os.path.join(root(out_dir), name), ignore_errors=True)


def write_error(out_dir: str, step: int, exc: OSError, who: str = "") -> RunError:
    """The one-line error for a checkpoint that could not be written (full disk, ...)."""
    prev = latest(out_dir)
    kept = f"step {prev}" if prev is not None else "none"
    return RunError(f"{who}checkpoint at step {step} could not be written "
                    f"({exc.strerror or exc}); the previous checkpoint ({kept}) is intact")


def latest(out_dir: str) -> int | None:
    """The committed checkpoint step in out_dir, or None."""
    path = os.path.join(root(out_dir), LATEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as fh:
            return int(json.load(fh)["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunError(f"checkpoint record {path} is unreadable: {exc}") from None


def check_resumable(out_dir: str, cfg: dict) -> int:
    """For ``--resume``: the latest step, after checking the config matches (ConfigError)."""
    import yaml

    step = latest(out_dir)
    if step is None:
        raise ConfigError(f"--resume: no checkpoint in {out_dir} (expected {root(out_dir)}/{LATEST}; "
                          f"set run.checkpoint_every to write them)")
    try:
        with open(os.path.join(out_dir, "config.yaml")) as fh:
            saved = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"--resume: cannot read {out_dir}/config.yaml ({exc.strerror})") from None
    for section in FROZEN:
        if saved.get(section) != cfg[section]:
            raise ConfigError(f"--resume: section {section} differs from the checkpointed run's "
                              f"({out_dir}/config.yaml); allowed to change: run.iterations, run.target, "
                              f"run.log_every, run.timeout_s, run.checkpoint_every")
    for key in FROZEN_RUN:
        if saved.get("run", {}).get(key) != cfg["run"][key]:
            raise ConfigError(f"--resume: run.{key} differs from the checkpointed run's")
    return step
