"""The run directory: who is writing it (a lock) and which run it holds (run.json).

    DIR/.psgd.lock   flock-ed by rank 0 while a run writes DIR; its text names the holder
    DIR/run.json     the run's identity: run_id, config_hash, n_workers, created, ...

A second run into a locked DIR is refused before launch, naming the holder. A lock whose
holder died (kill -9, a crashed node) is free again, because the kernel drops an flock with
its process; its text is left behind, so the next run says whose lock it took over. The
lock file is never removed (removing it would let two runs lock two different files).

A fresh run into a DIR that holds another run's results is refused unless ``--overwrite``
(remove them first) or ``--resume`` (continue that run) says what to do; ``--resume``
checks that the run in DIR is this config (:func:`config_hash`, which leaves out the keys
a resumed run may change) on this many workers.

Every output file is written whole (:func:`atomic_write`: a temporary file, fsync, rename)
or appended record by record with fsync at known points (:class:`AppendFile`), so a
crash or a full disk leaves the previous complete state and one line naming the file.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import socket
import sys
import uuid

from .errors import ConfigError, RunError

LOCK = ".psgd.lock"
IDENTITY = "run.json"
#: what psgd writes into DIR; --overwrite removes exactly these, nothing else of the user's
OUTPUTS = ("run.json", "metrics.jsonl", "summary.json", "model.npy", "config.yaml",
           "checkpoints")
#: the config keys a resumed run may change: they do not change what the run computes
MUTABLE = {"run": ("iterations", "target", "log_every", "timeout_s", "checkpoint_every",
                   "worker_delay"),
           "output": ("dir",)}
ALLOWED_CHANGES = ", ".join(f"{s}.{k}" for s, keys in MUTABLE.items() for k in keys)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def frozen_view(cfg: dict) -> dict:
    """The resolved config without the keys a resumed run may change."""
    view = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.items()}
    for section, keys in MUTABLE.items():
        for key in keys:
            view.get(section, {}).pop(key, None)
    return view


def config_hash(cfg: dict) -> str:
    """What identifies a run's computation: a hash of :func:`frozen_view`."""
    text = json.dumps(frozen_view(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _first_difference(old, new, path=""):
    """The first dotted key at which two config trees differ, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=lambda k: (k != "name", str(k))):
            found = _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    return None if old == new else (path, old, new)


# -- writing files that are never half there -----------------------------------------------


def _fsync_dir(path: str) -> None:
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes) -> None:
    """Replace ``path`` by ``data`` whole: write a temporary file, fsync, rename (OSError)."""
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
    _fsync_dir(os.path.dirname(path))


def replace_files(out_dir: str, files: dict, also_kept: str = "") -> None:
    """Replace several files of ``out_dir`` together: every one is written and fsync-ed
    beside its target first, then all are renamed, so a full disk or a crash while writing
    leaves every old file as it was. RunError naming the file that could not be written.
    A file's data is bytes, or a function that writes them to the open file (a large model
    streamed by ``np.save`` instead of held twice in memory as bytes)."""
    staged = []
    try:
        for name, data in files.items():
            path = os.path.join(out_dir, name)
            tmp = f"{path}.tmp{os.getpid()}"
            staged.append(tmp)
            try:
                with open(tmp, "wb") as fh:
                    data(fh) if callable(data) else fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                old = [n for n in files if os.path.exists(os.path.join(out_dir, n))]
                kept = (f"{out_dir} keeps its previous {' and '.join(old)}" if old else
                        f"none of {', '.join(files)} was written")
                raise write_error(path, exc, kept + also_kept) from None
        for name, tmp in zip(files, staged):
            os.replace(tmp, os.path.join(out_dir, name))
        staged = []
        _fsync_dir(out_dir)
    finally:
        for tmp in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)


def write_error(path: str, exc: OSError, kept: str) -> RunError:
    """The one-line error for an output file that could not be written."""
    return RunError(f"cannot write {path} ({exc.strerror or exc}); {kept}")


class AppendFile:
    """A text file appended to one record at a time (metrics.jsonl).

    Each ``write`` is one record; a record that cannot be written whole (a full disk) is
    cut off again, so the file always ends with a complete record. ``sync`` is the known
    point at which what was written is on disk (checkpoints and the end of the run).
    """

    def __init__(self, path: str, truncate: bool):
        self.path = path
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if truncate else 0)
        self.fd = os.open(path, flags, 0o644)
        self.size = os.fstat(self.fd).st_size

    def write(self, text: str) -> int:
        data = text.encode()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as exc:
            os.ftruncate(self.fd, self.size)  # frees what the partial record took
            raise write_error(self.path, exc, f"it keeps its {self.size} bytes of complete "
                                              f"records") from None
        self.size += len(data)
        return len(text)

    def flush(self) -> None:
        pass  # unbuffered: every write went straight to the kernel

    def tell(self) -> int:
        return self.size

    def sync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise write_error(self.path, exc, "its earlier records are intact") from None

    def read(self) -> bytes:
        """Everything written so far (for a checkpoint)."""
        with open(self.path, "rb") as fh:
            return fh.read(self.size)

    def close(self) -> None:
        if self.fd is not None:
            self.sync()
            os.close(self.fd)
            self.fd = None


# -- the lock and the identity -------------------------------------------------------------


class RunDir:
    """Rank 0's hold on the output directory for the length of one run."""

    def __init__(self, path: str, fd: int, identity: dict, overwrite: bool):
        self.path = path
        self.fd = fd
        self.identity = identity
        self.overwrite = overwrite

    @classmethod
    def claim(cls, path: str, cfg: dict, n_workers: int, *, resume: bool,
              overwrite: bool) -> "RunDir":
        """Lock ``path`` and check that this run may write it (ConfigError, before launch)."""
        if resume and overwrite:
            raise ConfigError("--resume and --overwrite: choose one (continue the run in the "
                              "output directory, or replace it)")
        try:
            os.makedirs(path, exist_ok=True)
            fd = os.open(os.path.join(path, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"output.dir: cannot create or write {path} "
                              f"({exc.strerror or exc}); allowed: a writable directory") from None
        try:
            holder = _lock(fd, path)
            identity = _check(path, cfg, n_workers, resume=resume, overwrite=overwrite)
        except BaseException:
            os.close(fd)  # also releases the lock, if it was taken
            raise
        if holder:
            print(f"psgd: note: took over the lock of {path} left by a run that is no longer "
                  f"running ({_holder_text(holder)})", file=sys.stderr, flush=True)
        identity.update(host=socket.gethostname(), pid=os.getpid(), started=_now(),
                        slurm_job_id=os.environ.get("SLURM_JOB_ID"))
        mine = {k: identity[k] for k in ("host", "pid", "started", "run_id")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(mine).encode(), 0)
        return cls(path, fd, identity, overwrite)

    @property
    def run_id(self) -> str:
        return self.identity["run_id"]

    def start(self) -> None:
        """Setup succeeded on every rank: clear old outputs (--overwrite), write run.json."""
        if self.overwrite:
            for name in OUTPUTS:
                full = os.path.join(self.path, name)
                if os.path.isdir(full) and not os.path.islink(full):
                    shutil.rmtree(full)
                elif os.path.lexists(full):
                    os.unlink(full)
            print(f"psgd: --overwrite: removed the previous run's outputs in {self.path}",
                  flush=True)
        full = os.path.join(self.path, IDENTITY)
        try:
            atomic_write(full, (json.dumps(self.identity, indent=2) + "\n").encode())
        except OSError as exc:
            raise write_error(full, exc, "nothing of the run was written yet") from None

    def release(self) -> None:
        """The run is over: an empty lock file is a free one."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass  # a full disk cannot stop truncation, but a vanished directory can
        os.close(self.fd)  # drops the flock
        self.fd = None


def _holder_text(h: dict) -> str:
    return f"host {h.get('host', '?')}, pid {h.get('pid', '?')}, started {h.get('started', '?')}"


def _lock(fd: int, path: str) -> dict:
    """Take the flock on ``fd``; return what a dead holder left in it ({} if it was free)."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(f"output.dir: {path} is in use by another psgd run "
                          f"({_holder_text(_read_holder(fd))}); wait for it to end, or choose "
                          f"another --out") from None
    return _read_holder(fd)


def _read_holder(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0)
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {"host": "unknown (unreadable lock file)"}


def read_identity(path: str) -> dict | None:
    """DIR/run.json, or None when there is none (ConfigError if it is unreadable)."""
    full = os.path.join(path, IDENTITY)
    if not os.path.exists(full):
        return None
    try:
        with open(full) as fh:
            ident = json.load(fh)
        if not isinstance(ident, dict) or not isinstance(ident.get("run_id"), str):
            raise ValueError("no run_id")
        return ident
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{full} is unreadable ({exc}); it identifies the run in "
                          f"{path}: restore it, or start afresh with --overwrite") from None


def _results(path: str) -> list:
    return [name for name in OUTPUTS if name != "config.yaml"
            and os.path.lexists(os.path.join(path, name))]


def _check(path: str, cfg: dict, n_workers: int, *, resume: bool, overwrite: bool) -> dict:
    """The identity this run will write (ConfigError when it may not write ``path``)."""
    fresh = {"run_id": uuid.uuid4().hex[:16], "config_hash": config_hash(cfg),
             "n_workers": n_workers, "created": _now()}
    if overwrite:
        return fresh
    if not resume:
        found = _results(path)
        if found:
            try:
                old = read_identity(path) or {}
            except ConfigError:
                old = {}
            which = (f"run {old['run_id']}, started {old.get('created', '?')}"
                     if old else "an earlier run")
            raise ConfigError(f"output.dir: {path} holds the results of {which} "
                              f"({', '.join(found)}); allowed: --resume to continue it, "
                              f"--overwrite to replace it, or another --out")
        return fresh
    from . import checkpoint

    if checkpoint.latest(path) is None:
        raise ConfigError(f"--resume: no checkpoint in {path} (expected "
                          f"{checkpoint.root(path)}/{checkpoint.LATEST}; set "
                          f"run.checkpoint_every to write them)")
    old = read_identity(path)
    if old is None:
        raise ConfigError(f"--resume: {path} has checkpoints but no {IDENTITY} (written by an "
                          f"older psgd), so they cannot be checked against this config; "
                          f"start afresh with --overwrite")
    if old.get("n_workers") != n_workers:
        raise ConfigError(f"--resume: the run in {path} has {old.get('n_workers')} workers "
                          f"(mpiexec -n {_ranks(old.get('n_workers'))}), this launch has "
                          f"{n_workers} (-n {n_workers + 1}); allowed: the same number of ranks")
    if old.get("config_hash") != config_hash(cfg):
        raise ConfigError(f"--resume: {_what_differs(path, cfg)}; allowed to change: "
                          f"{ALLOWED_CHANGES}")
    return {k: old[k] for k in ("run_id", "config_hash", "n_workers", "created")}


def _ranks(n):
    return n + 1 if isinstance(n, int) else "?"


def _what_differs(path: str, cfg: dict) -> str:
    """Name the first frozen key that differs from the saved config.yaml, if it says."""
    import yaml

    try:
        with open(os.path.join(path, "config.yaml")) as fh:
            saved = yaml.safe_load(fh)
        found = _first_difference(frozen_view(saved), frozen_view(cfg))
    except (OSError, yaml.YAMLError, AttributeError):
        found = None
    if found is None:
        return f"the config differs from the checkpointed run's (its {IDENTITY} config_hash)"
    key, old, new = found
    return (f"section {key.split('.')[0]} differs from the checkpointed run's ({key}: "
            f"{_short(old)} there, {_short(new)} now; {path}/config.yaml)")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
