"""``psgd sweep``: one ``psgd run`` per grid point, K at a time, resumable.

The sweep format is the one ``slurm/sweep.sbatch`` reads (and that script calls
:func:`line_args` through ``python -m psgd.sweep line``, so the two cannot drift):

* a sweep is a list of points; point i is one line of a sweep file, one or more
  ``--set key=value`` words (a bare ``key=value`` means ``--set key=value``), quoted as in
  the shell; blank lines and ``#`` comments are skipped;
* point i runs with the common options first and the point's own options last (they win)
  and writes ``BASE/<i>``.

``psgd sweep CONFIG --grid a=1,2 --grid b=x,y --out DIR`` expands the grid in row-major
order (the first ``--grid`` varies slowest), writes it as ``DIR/sweep.txt`` (so the same
sweep can be submitted with ``sbatch --array=0-3 slurm/sweep.sbatch CONFIG DIR/sweep.txt
--out DIR``), runs every point that has no ``DIR/<i>/summary.json`` yet, and prints a
table. A point with a checkpoint resumes from it, as in ``slurm/psgd.sbatch``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class SweepError(ValueError):
    """Bad sweep input: the message is the one line shown to the user (exit 2)."""


# -- the shared format ------------------------------------------------------------------------


def line_args(line: str) -> list[str]:
    """The ``psgd run`` options of one sweep-file line.

    Words are split as the shell does; a ``key=value`` word not preceded by ``--set`` becomes
    ``--set key=value``; every other word is kept as it is (``--set``, other options).
    """
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise SweepError(f"cannot parse sweep line {line!r}: {exc}") from None
    if not words:
        raise SweepError(f"cannot parse sweep line {line!r}: no words")
    args: list[str] = []
    for w in words:
        if "=" in w and not w.startswith("-") and not (args and args[-1] == "--set"):
            args.append("--set")
        args.append(w)
    return args


def read_lines(text: str) -> list[str]:
    """The setting lines of a sweep file: not blank, not a comment."""
    return [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def read_sweep_file(path) -> list[list[str]]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SweepError(f"sweep file {path}: cannot read it ({exc.strerror or exc})") from None
    lines = read_lines(text)
    if not lines:
        raise SweepError(f"sweep file {path}: no setting lines (one run per line, "
                         f"e.g. --set compressor.levels=2)")
    return [line_args(ln) for ln in lines]


def point_dir(base, index: int) -> Path:
    return Path(base) / str(index)


def format_line(args: list[str]) -> str:
    return shlex.join(args)


def split_values(text: str) -> list[str]:
    """``1,2,{0: 0.1, 1: 0.2}`` -> ``['1', '2', '{0: 0.1, 1: 0.2}']``: commas inside brackets
    or quotes belong to the value (YAML flow values)."""
    out, cur, depth, quote = [], [], 0, None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur))
    return out


def grid_points(grids: list[str]) -> list[list[str]]:
    """``['a=1,2', 'b=x,y']`` -> the 4 points' options, row-major (the first grid slowest)."""
    axes = []
    seen = set()
    for g in grids:
        key, sep, values = g.partition("=")
        key = key.strip()
        if not sep or not key or key.startswith("-"):
            raise SweepError(f"--grid {g}: expected key.path=v1,v2,... "
                             f"(e.g. --grid compressor.levels=1,2,4)")
        if key in seen:
            raise SweepError(f"--grid {g}: {key} is given twice; allowed: each key once")
        seen.add(key)
        vals = split_values(values)
        if any(not v.strip() for v in vals):
            raise SweepError(f"--grid {g}: empty value; allowed: a comma-separated list of "
                             f"values, e.g. {key}=1,2")
        axes.append([f"{key}={v.strip()}" for v in vals])
    return [[w for kv in combo for w in ("--set", kv)] for combo in itertools.product(*axes)]


# -- running points ---------------------------------------------------------------------------


def mpiexec() -> str:
    """psgd.mpiexec.path(), or a SweepError saying how to get one."""
    from . import mpiexec as locate

    found = locate.path()
    if not found:
        raise SweepError("mpiexec not found beside this Python or on PATH; install the mpich "
                         "extra (pip install 'psgd[mpich]') or load your site's MPI")
    return found


def finished(out: Path) -> bool:
    return (out / "summary.json").is_file()


def run_command(config, args: list[str], out: Path, ranks: int) -> list[str]:
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "psgd", "run", str(config),
           *args, "--out", str(out)]
    if (out / "checkpoints" / "latest.json").is_file():
        cmd.append("--resume")  # as slurm/psgd.sbatch does: an interrupted point continues
    return cmd


def run_points(config, points: list[list[str]], base, *, ranks: int, jobs: int = 1,
               common=(), stream=None, log_dir=None, names=None) -> list[dict]:
    """Run every unfinished point (common options first, the point's last), ``jobs`` at once.

    Returns one row per point: index, args, out, state (``skipped`` | ``ran`` | ``failed``),
    returncode and the log path. Each run's output goes to ``log_dir/<i>.log`` (beside the run
    directories, not inside them, so psgd owns its output directory alone). ``names`` replaces
    the indices in the directory and log names (``psgd reproduce`` names its runs).
    """
    stream = stream or sys.stdout
    base = Path(base)
    log_dir = Path(log_dir) if log_dir else base / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    names = [str(i) for i in range(len(points))] if names is None else list(names)
    rows = [{"index": i, "args": list(common) + p, "out": base / names[i], "state": "pending",
             "returncode": None, "log": log_dir / f"{names[i]}.log"} for i, p in enumerate(points)]
    todo = [r for r in rows if not finished(r["out"])]
    for r in rows:
        if r not in todo:
            r["state"] = "skipped"
    with lock:
        print(f"sweep: {len(rows)} points, {len(rows) - len(todo)} finished already, "
              f"running {len(todo)} ({jobs} at a time, {ranks} ranks each)", file=stream,
              flush=True)

    def one(r):
        cmd = run_command(config, r["args"], r["out"], ranks)
        t0 = time.perf_counter()
        with open(r["log"], "w") as log:
            log.write("$ " + shlex.join(cmd) + "\n")
            log.flush()
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL).returncode
        r["returncode"] = rc
        r["state"] = "ran" if rc == 0 and finished(r["out"]) else "failed"
        with lock:
            note = "" if r["state"] == "ran" else f"  FAILED (exit {rc}; see {r['log']})"
            print(f"sweep: point {r['index']} {format_line(r['args'])}: "
                  f"{time.perf_counter() - t0:.1f} s{note}", file=stream, flush=True)

    if todo:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            list(pool.map(one, todo))
    return rows


def summary_row(r: dict) -> dict:
    """What the summary table shows of a point: its settings and its summary.json."""
    out = {"point": r["index"], "settings": " ".join(a for a in r["args"] if a != "--set"),
           "state": r["state"]}
    path = r["out"] / "summary.json"
    s = json.loads(path.read_text()) if path.is_file() else {}
    for key in ("status", "iterations", "final_subopt", "bits_up_total", "wall_s"):
        out[key] = s.get(key)
    return out


def format_table(rows: list[dict]) -> str:
    cols = ["point", "settings", "state", "status", "iterations", "final_subopt",
            "bits_up_total", "wall_s"]

    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3e}" if abs(v) < 1e-2 or abs(v) >= 1e6 else f"{v:.3g}"
        return str(v)

    cells = [[cell(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


# -- command line -----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise SweepError(f"{message} (see psgd sweep --help)")


def _parser():
    p = _Parser(prog="psgd sweep", description="One psgd run per grid point, resumable.")
    p.add_argument("config")
    p.add_argument("--grid", action="append", default=[], metavar="KEY.PATH=V1,V2,...",
                   help="a swept key and its values (repeatable: the grid is the product)")
    p.add_argument("--file", metavar="SWEEPFILE",
                   help="the points from a sweep file (slurm/sweep.sbatch's format) instead")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="an override for every point (a point's own settings win)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    p.add_argument("--ranks", type=int, default=5,
                   help="MPI ranks per run: 1 server + workers (default 5)")
    p.add_argument("--out", required=True, help="the sweep directory: point i goes to OUT/<i>")
    return p


def main(argv=None) -> int:
    try:
        return _main(argv)
    except SweepError as exc:
        print(f"psgd: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _main(argv) -> int:
    a = _parser().parse_args(argv)
    if bool(a.grid) == bool(a.file):
        raise SweepError("give the points with --grid KEY=V1,V2 (repeatable) or --file "
                         "SWEEPFILE, not both and not neither")
    if a.jobs < 1:
        raise SweepError(f"--jobs: got {a.jobs}; allowed: an integer >= 1")
    if a.ranks < 2:
        raise SweepError(f"--ranks: got {a.ranks}; allowed: an integer >= 2 "
                         f"(1 server + at least 1 worker)")
    if not Path(a.config).is_file():
        raise SweepError(f"config file {a.config} not found")
    common = [w for s in a.set for w in ("--set", s)]
    # the common options go into every point, so OUT/sweep.txt is the whole sweep
    points = [common + p for p in (grid_points(a.grid) if a.grid else read_sweep_file(a.file))]
    _check_points(a.config, points)
    base = Path(a.out)
    base.mkdir(parents=True, exist_ok=True)
    _write_sweep_file(base / "sweep.txt", points)
    rows = run_points(a.config, points, base, ranks=a.ranks, jobs=a.jobs)
    print(format_table([summary_row(r) for r in rows]))
    failed = [r for r in rows if r["state"] == "failed"]
    if failed:
        print(f"sweep: {len(failed)} of {len(rows)} points failed: "
              f"{', '.join(str(r['index']) for r in failed)} (logs in {base / 'logs'}); "
              f"run the same command again to retry them", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _check_points(config, points) -> None:
    """Validate every point's config before starting anything: a typo in the last value of a
    grid must not surface an hour into the sweep."""
    from .config import load
    from .errors import ConfigError, DataFormatError

    for i, args in enumerate(points):
        sets = [args[j + 1] for j, w in enumerate(args[:-1]) if w == "--set"]
        try:
            load(config, sets)
        except (ConfigError, DataFormatError) as exc:
            raise SweepError(f"point {i} ({format_line(args)}): {exc}") from None


def _write_sweep_file(path: Path, points) -> None:
    """OUT/sweep.txt: the points, one line each. A sweep directory holds one sweep: resuming
    with different points would match old results to new settings by index."""
    text = ("# psgd sweep points: point i writes <this directory>/<i>; also runs as\n"
            "#   sbatch --array=0-%d slurm/sweep.sbatch CONFIG %s --out %s\n"
            % (len(points) - 1, path, path.parent))
    text += "".join(format_line(p) + "\n" for p in points)
    if path.is_file():
        old = [line_args(ln) for ln in read_lines(path.read_text())]
        if old != points:
            raise SweepError(f"--out {path.parent}: holds a different sweep ({path} lists "
                             f"{len(old)} other points); allowed: the same points to resume, "
                             f"or a new directory")
        return
    path.write_text(text)


def _cli_line(argv) -> int:
    """``python -m psgd.sweep line SWEEPFILE INDEX``: point INDEX's options, NUL-separated
    (for slurm/sweep.sbatch; errors are one line on stderr, exit 2)."""
    if len(argv) != 2:
        print("usage: python -m psgd.sweep line SWEEPFILE INDEX", file=sys.stderr)
        return EXIT_USAGE
    try:
        points = read_sweep_file(argv[0])
        index = int(argv[1])
        if not 0 <= index < len(points):
            raise SweepError(f"array index {index} but {argv[0]} has only {len(points)} "
                             f"settings (use --array=0-{len(points) - 1})")
    except (SweepError, ValueError) as exc:
        print(f"psgd: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write("".join(w + "\0" for w in points[index]))
    return EXIT_OK


if __name__ == "__main__":
    if sys.argv[1:2] == ["line"]:
        sys.exit(_cli_line(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
