"""Running the targets: child processes (a crash or hang is a finding, not the end of the
run), the watchdog, partial results, the per-(target, name) statistics and the report;
``replay`` re-runs one case in this process."""

from __future__ import annotations

import json
import mmap
import os
import queue
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import numpy as np

from .mutations import hexdump
from .pipe import LineReader
from .targets import (TARGETS, find_data_dir, layered_compressors, make_target,
                      multi_round_compressors)

#: cases per child task (a target's cases are split so that children share the work)
CHUNK = 20000
#: failures kept (with reproducers) per kind and task chunk; all are counted
KEEP_FAILURES = 25
#: seconds between partial results of a child (what a crash cannot take away)
FLUSH_S = 1.0

#: targets/compressors that take longest per case go first (better packing over --jobs)
_SLOW_FIRST = ("libsvm", "spherical", "haar_sketch", "gaussian_sketch", "coordinate_sketch")


class Stats:
    """Counts of one (target, name): cases and outcomes, per mutation too."""

    FIELDS = ("cases", "rejected", "accepted", "d_unverified", "failures", "partial_writes")

    def __init__(self):
        self.c = dict.fromkeys(self.FIELDS, 0)
        self.ops: dict[str, list[int]] = {}
        self.elapsed = 0.0
        self.max_ms = 0.0
        self.max_case = -1
        self.failures: list[dict] = []
        self.kinds: dict[str, int] = {}
        self.notes: list[str] = []

    def fail(self, rec: dict, check: bool = False) -> None:
        """Keep a failure record; ``check``: it is no case (a setup or resource check) and is
        counted here (failing cases are counted by :meth:`count`)."""
        if check:
            self.c["failures"] += 1
        kind = rec["kind"]
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if self.kinds[kind] <= KEEP_FAILURES:
            self.failures.append(rec)

    def count(self, op, outcome):
        self.c["cases"] += 1
        self.c[outcome] += 1
        row = self.ops.setdefault(op, [0, 0, 0, 0, 0])
        row[0] += 1
        row[{"rejected": 1, "accepted": 2, "d_unverified": 3, "failures": 4}[outcome]] += 1

    def to_json(self):
        return {"c": self.c, "ops": self.ops, "elapsed": self.elapsed, "max_ms": self.max_ms,
                "max_case": self.max_case, "failures": self.failures, "kinds": self.kinds,
                "notes": self.notes}

    def merge(self, js):
        for k, v in js["c"].items():
            self.c[k] = self.c.get(k, 0) + v
        for op, row in js["ops"].items():
            mine = self.ops.setdefault(op, [0, 0, 0, 0, 0])
            for i, v in enumerate(row):
                mine[i] += v
        self.elapsed += js["elapsed"]
        if js["max_ms"] > self.max_ms:
            self.max_ms, self.max_case = js["max_ms"], js["max_case"]
        for rec in js["failures"]:
            if sum(f["kind"] == rec["kind"] for f in self.failures) < KEEP_FAILURES:
                self.failures.append(rec)
        for k, v in js["kinds"].items():
            self.kinds[k] = self.kinds.get(k, 0) + v
        for n in js["notes"]:
            if n not in self.notes:
                self.notes.append(n)



# -- child process ------------------------------------------------------------------------------

_PROGRESS = struct.Struct("<qq")   # (task serial, case index; -1 while setting up)


def import_plugins(paths):
    import importlib
    import importlib.util

    for spec in paths:
        if spec.endswith(".py") or os.sep in spec:
            mod_name = "psgd_fuzz_plugin_" + os.path.splitext(os.path.basename(spec))[0]
            if mod_name in sys.modules:
                continue
            s = importlib.util.spec_from_file_location(mod_name, spec)
            mod = importlib.util.module_from_spec(s)
            sys.modules[mod_name] = mod
            s.loader.exec_module(mod)
        else:
            importlib.import_module(spec)


def child_main(argv) -> int:
    """``python -m psgd.fuzz --child PROGRESS_FILE``: run tasks read from stdin (JSON lines),
    write one JSON result line per task to stdout, publish (task, case) in PROGRESS_FILE."""
    import faulthandler
    import resource
    import warnings

    progress_path, limit_mb = argv[0], int(argv[1])
    plugins = json.loads(argv[2])
    faulthandler.enable(file=sys.stderr, all_threads=False)
    if limit_mb > 0:
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit_mb << 20, limit_mb << 20))
        except (ValueError, OSError):
            pass
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                       # stray prints go to the log, not into the protocol
    sys.stdout = sys.stderr
    warnings.simplefilter("ignore")     # kernel fallbacks etc.: the parent reports the build
    import_plugins(plugins)
    with open(progress_path, "r+b") as fh:
        mm = mmap.mmap(fh.fileno(), _PROGRESS.size)
    targets = {}
    for line in sys.stdin:
        task = json.loads(line)
        serial = task["serial"]
        _PROGRESS.pack_into(mm, 0, serial, -1)
        stats = Stats()
        key = (task["target"], task["name"])
        t0 = last = time.perf_counter()
        if key not in targets:
            try:
                targets[key] = make_target(task["target"], task["name"], task["seed"],
                                           task.get("data_dir"), os.path.dirname(progress_path))
            except Exception as exc:  # noqa: BLE001 - e.g. a compressor that cannot be built
                stats.fail({"target": task["target"], "name": task["name"], "seed": task["seed"],
                            "case": -1, "op": "setup", "kind": "setup error", "hex": "",
                            "detail": "".join(traceback.format_exception(exc)).strip()[-2000:]},
                           check=True)
                proto.write(json.dumps({"serial": serial, "stats": stats.to_json()}) + "\n")
                continue
        tgt = targets[key]
        stats.notes.extend(tgt.notes)
        if task.get("setup_checks"):
            for rec in (tgt.setup_checks() if hasattr(tgt, "setup_checks") else tgt.setup_failures):
                stats.fail(rec, check=True)
        runnable = getattr(tgt, "pool", True)
        for i in range(task["start"], task["stop"] if runnable else task["start"]):
            _PROGRESS.pack_into(mm, 0, serial, i)
            tgt.run_case(i, stats)
            now = time.perf_counter()
            if now - last > FLUSH_S:
                stats.elapsed = now - t0
                proto.write(json.dumps({"serial": serial, "partial": True, "upto": i + 1,
                                        "stats": stats.to_json()}) + "\n")
                stats, t0, last = Stats(), now, now
        stats.elapsed = time.perf_counter() - t0
        proto.write(json.dumps({"serial": serial, "stats": stats.to_json()}) + "\n")
    return 0


# -- parent ---------------------------------------------------------------------------------------

class _Child:
    def __init__(self, workdir, slot, limit_mb, plugins):
        self.dir = tempfile.mkdtemp(prefix=f"slot{slot}-", dir=workdir)
        self.progress = os.path.join(self.dir, "progress")
        with open(self.progress, "wb") as fh:
            fh.write(_PROGRESS.pack(-1, -1))
        self.log = os.path.join(self.dir, "stderr.log")
        import psgd

        root = os.path.dirname(os.path.dirname(os.path.abspath(psgd.__file__)))
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        self.logfh = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "psgd.fuzz", "--child", self.progress, str(limit_mb), json.dumps(plugins)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.logfh, cwd=self.dir, env=env,
            text=True, bufsize=1)
        self.lines = LineReader(self.proc.stdout)

    def read_progress(self):
        with open(self.progress, "rb") as fh:
            return _PROGRESS.unpack(fh.read(_PROGRESS.size))

    def log_tail(self, n=6):
        """The end of the child's stderr: the faulthandler report of a crash, trimmed."""
        try:
            with open(self.log, "rb") as fh:
                text = fh.read()[-8000:].decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("Extension modules")]
        at = max((k for k, ln in enumerate(lines) if ln.startswith("Fatal Python error")), default=None)
        return "\n".join(lines[at:at + n] if at is not None else lines[-n:])

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.logfh.close()

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        self.logfh.close()


class Report:
    """Per-(target, name) statistics of a fuzz run."""

    def __init__(self):
        self.stats: dict[tuple, Stats] = {}
        self.wall = 0.0
        self.header = ""

    @property
    def failures(self):
        return [f for s in self.stats.values() for f in s.failures]

    @property
    def n_failures(self):
        return sum(s.c["failures"] for s in self.stats.values())

    @property
    def ok(self):
        return self.n_failures == 0

    def table(self) -> str:
        rows = [("target", "name", "cases", "rejected", "accepted", "d?", "failures", "cases/s", "max ms")]
        for (t, n), s in sorted(self.stats.items(), key=lambda kv: (TARGETS.index(kv[0][0]), kv[0][1])):
            rate = s.c["cases"] / s.elapsed if s.elapsed else 0.0
            rows.append((t, n, s.c["cases"], s.c["rejected"], s.c["accepted"], s.c["d_unverified"],
                         s.c["failures"], f"{rate:.0f}", f"{s.max_ms:.1f}"))
        tot = [sum(s.c[k] for s in self.stats.values()) for k in ("cases", "rejected", "accepted",
                                                                   "d_unverified", "failures")]
        rows.append(("all", "", *tot, "", ""))
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
        lines = []
        for k, r in enumerate(rows):
            lines.append("  ".join(str(v).ljust(w) if j < 2 else str(v).rjust(w)
                                   for j, (v, w) in enumerate(zip(r, widths))))
            if k == 0 or k == len(rows) - 2:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def ops_table(self) -> str:
        lines = []
        for (t, n), s in sorted(self.stats.items()):
            parts = ", ".join(f"{op} {'/'.join(map(str, r))}" for op, r in sorted(s.ops.items()))
            lines.append(f"{t}/{n}: (cases/rejected/accepted/d?/failures) {parts}")
        return "\n".join(lines)

    def to_json(self):
        return {"wall_s": self.wall, "header": self.header,
                "stats": {f"{t}/{n}": s.to_json() for (t, n), s in self.stats.items()}}


def _tasks(targets, cases, compressors, seed, data_dir):
    listers = _per_compressor_listers()
    names = []
    for t in targets:
        if t in listers:  # one task per compressor the target covers (of the subset, if given)
            names += [(t, c) for c in listers[t]() if not compressors or c in compressors]
        else:
            names.append((t, t))
    names.sort(key=lambda tn: (0 if tn[1] in _SLOW_FIRST else 1, _SLOW_FIRST.index(tn[1])
                               if tn[1] in _SLOW_FIRST else 0))
    out = []
    for t, n in names:
        for start in range(0, cases, CHUNK):
            out.append({"target": t, "name": n, "seed": seed, "start": start,
                        "stop": min(cases, start + CHUNK), "data_dir": data_dir})
        if cases == 0:
            out.append({"target": t, "name": n, "seed": seed, "start": 0, "stop": 0,
                        "data_dir": data_dir})
    return out


def _abnormal(task, case, kind, detail, plugins, data_dir):
    """A failure record for a crash or hang at ``case``, with the reproducer regenerated here."""
    rec = {"target": task["target"], "name": task["name"], "seed": task["seed"], "case": case,
           "kind": kind, "detail": detail, "op": "?", "hex": ""}
    if case < 0:
        rec["detail"] += " (while building the valid inputs)"
        return rec
    try:
        import_plugins(plugins)
        tgt = make_target(task["target"], task["name"], task["seed"], data_dir)
        case_d = tgt.make_case(case)
        rec.update(op=case_d["op"], mutation=case_d["desc"], hex=hexdump(case_d["data"]))
        if task["target"] == "codecs":
            e = case_d["entry"]
            rec.update(params=tgt.params[e["p"]], d=e["d"], key=case_d["key"], placement=case_d["how"])
    except Exception as exc:  # noqa: BLE001
        rec["detail"] += f" (reproducer not regenerated: {type(exc).__name__}: {exc})"
    return rec


def run_fuzz(targets=TARGETS, cases=1000, compressors=None, seed=0, timeout=10.0, jobs=None,
             data_dir=None, plugins=(), limit_mb=4096, progress=None) -> Report:
    """Run the fuzz targets in child processes; return the :class:`Report`."""
    plugins = [os.path.abspath(p) if p.endswith(".py") else p for p in plugins]
    import_plugins(plugins)
    from .. import kernels

    jobs = max(1, jobs or min(2, os.cpu_count() or 1))
    data_dir = find_data_dir(data_dir) if "libsvm" in targets else None
    tasks = _tasks(targets, cases, compressors, seed, data_dir)
    report = Report()
    import psgd

    report.header = (f"psgd {os.path.dirname(psgd.__file__)}; compiled kernels: "
                     f"{'yes' if kernels.HAVE_CYTHON and kernels.HAVE_CYTHON_SPARSE_SPHERE else 'NO (NumPy twins)'}"
                     f"; seed {seed}; {cases} cases per compressor/target; {jobs} jobs; "
                     f"timeout {timeout:g} s/case")
    for t in tasks:
        report.stats.setdefault((t["target"], t["name"]), Stats())
    work = queue.Queue()
    for t in tasks:
        work.put(t)
    lock = threading.Lock()
    workdir = tempfile.mkdtemp(prefix="psgd-fuzz-")
    serials = iter(range(1, 10**9))
    remaining = {(t["target"], t["name"]): 0 for t in tasks}
    for t in tasks:
        remaining[(t["target"], t["name"])] += 1

    def record(task, stats_json=None, failure=None):
        with lock:
            s = report.stats[(task["target"], task["name"])]
            if stats_json is not None:
                s.merge(stats_json)
            if failure is not None:
                s.c["cases"] += failure["case"] >= 0
                s.fail(failure, check=True)

    def slot(k):
        child = None
        while True:
            try:
                task = work.get_nowait()
            except queue.Empty:
                break
            # segments of [start, stop) still to run; after a crash or hang at case c, the cases
            # since the child's last partial result are re-run (they are deterministic) and the
            # run goes on at c + 1 in a new child
            segments = [(task["start"], task["stop"], task["start"] == 0)]
            while segments:
                start, stop, checks = segments.pop(0)
                if child is None:
                    child = _Child(workdir, k, limit_mb, plugins)
                with lock:
                    serial = next(serials)
                try:
                    child.proc.stdin.write(json.dumps({**task, "start": start, "stop": stop,
                                                       "serial": serial, "setup_checks": checks}) + "\n")
                    child.proc.stdin.flush()
                except OSError:
                    pass
                done, upto, where, why = _wait(child, serial, timeout, start,
                                               lambda msg: record(task, msg["stats"]))
                if done:
                    continue
                child.kill()
                if why == "hang":
                    detail = f"no progress for {timeout:g} s on this case (killed)"
                else:
                    rc = child.proc.returncode
                    sig = f"signal {-rc}" if rc is not None and rc < 0 else f"exit code {rc}"
                    detail = f"child process died ({sig}); last output:\n{child.log_tail()}"
                record(task, failure=_abnormal(task, where, why, detail, plugins, data_dir))
                child = None
                if where < 0:
                    continue                       # could not even set up: skip this segment
                rest = [(upto, where, False)] if upto < where else []
                if where + 1 < stop:
                    rest.append((where + 1, stop, False))
                segments = rest + segments
            with lock:
                key = (task["target"], task["name"])
                remaining[key] -= 1
                finished = remaining[key] == 0
            if finished and progress:
                s = report.stats[key]
                progress(f"done {key[0]}/{key[1]}: {s.c['cases']} cases, {s.c['failures']} failures, "
                         f"{s.elapsed:.1f} s")
        if child is not None:
            child.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=slot, args=(k,), daemon=True) for k in range(jobs)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    report.wall = time.perf_counter() - t0
    shutil.rmtree(workdir, ignore_errors=True)
    return report


def _wait(child, serial, timeout, start, on_stats):
    """Follow one segment: ``(True, upto, None, None)`` when it completed, else
    ``(False, upto, case, "crash"|"hang")``; ``upto`` is the first case whose result was not
    received (partial results go to ``on_stats`` as they arrive)."""
    setup_timeout = max(120.0, 10 * timeout)
    last, since, upto = None, time.monotonic(), start

    def consume(line):
        nonlocal upto
        msg = json.loads(line)
        if msg.get("serial") != serial:
            return False
        on_stats(msg)
        if msg.get("partial"):
            upto = msg["upto"]
            return False
        return True

    while True:
        line = child.lines.readline(0.1)
        if line:
            if consume(line):
                return True, upto, None, None
            continue
        if line == "":  # end of file: the child is gone
            child.proc.wait()
            return False, upto, _case_of(child, serial), "crash"
        if child.proc.poll() is not None:
            while line := child.lines.readline(0):
                if consume(line):
                    return True, upto, None, None
            return False, upto, _case_of(child, serial), "crash"
        cur = child.read_progress()
        now = time.monotonic()
        if cur != last:
            last, since = cur, now
        elif now - since > (timeout if cur[0] == serial and cur[1] >= 0 else setup_timeout):
            return False, upto, _case_of(child, serial), "hang"


def _case_of(child, serial):
    s, case = child.read_progress()
    return case if s == serial else -1


# -- replay / command line --------------------------------------------------------------------------

def _per_compressor_listers():
    """The targets with one task per compressor (TARGET:COMPRESSOR:CASE), each with the
    function that lists the compressors it covers (imported late: the registry is heavy)."""
    from ..compressors import available

    return {"codecs": available, "rounds": multi_round_compressors,
            "layered": layered_compressors}


PER_COMPRESSOR = ("codecs", "rounds", "layered")  # (the keys of _per_compressor_listers)


def replay(spec: str, seed: int, data_dir=None) -> int:
    """Re-run one case (``TARGET:NAME:CASE``) here, printing the input and every outcome."""
    target, name, case = spec.split(":")
    if target not in PER_COMPRESSOR:  # (the others have one name: the target's)
        name = target
    case = int(case)
    tgt = make_target(target, name, seed, find_data_dir(data_dir))
    c = tgt.make_case(case)
    print(f"{target}/{name} seed {seed} case {case}: op {c['op']}: {c['desc']}")
    print(f"input ({len(c['data'])} bytes): {hexdump(c['data'])}")
    stats = Stats()
    tgt.run_case(case, stats)
    for f in stats.failures:
        print(f"FAILURE {f['kind']}: {f['detail']}")
    if target in PER_COMPRESSOR:
        e = c["entry"]
        comp = tgt.comps[e["p"]]
        print(f"compressor {comp!r}, d={e['d']}, key={c['key']}, valid buffer: {hexdump(e['buf'], 200)}")
        for kw in ({"d": e["d"]}, {}):
            try:
                y = comp.decode(np.frombuffer(c["data"], np.uint8), key=c["key"], **kw)
                print(f"decode {kw}: accepted, {y.shape}")
            except Exception:  # noqa: BLE001
                print(f"decode {kw}:")
                traceback.print_exc(file=sys.stdout)
    return 1 if stats.failures else 0
