"""``psgd report RUN_DIR... [--eps 1e-2,1e-4,1e-6] [--format text|csv|md]``.

Per run and per eps: the first logged record with ``subopt <= eps`` (or another metric with
``--metric``), and at that record the step, the epoch, the bits (headers included, and the
payload alone where the run counts it) and the wall time. Runs only evaluate the model every
``run.log_every`` steps, so "first" is resolved at that cadence: the true crossing lies
within one logging interval before the reported record. The output says so.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys

from .results import RunDirError, labels, load_runs

FORMATS = ("text", "csv", "md")
METRICS = ("subopt", "rel_subopt", "dist2", "grad_norm")
COLUMNS = ("run", "eps", "reached", "step", "epoch", "bits", "payload_bits", "time_s",
           "value", "log_every")


class ReportError(ValueError):
    pass


def parse_eps(text: str) -> list[float]:
    try:
        eps = [float(t) for t in text.split(",")]
    except ValueError:
        raise ReportError(f"--eps: got {text!r}; allowed: comma-separated positive numbers, "
                          f"e.g. 1e-2,1e-4,1e-6") from None
    if not eps or any(not (e > 0 and math.isfinite(e)) for e in eps):
        raise ReportError(f"--eps: got {text!r}; allowed: comma-separated positive numbers")
    return eps


def first_below(run, metric: str, eps: float):
    """Index of the first record with ``metric <= eps``, or None."""
    for i, v in enumerate(run.series(metric)):
        if v is not None and v <= eps:
            return i
    return None


def rows(runs, eps_list, metric="subopt", names=None) -> list[dict]:
    names = names or labels(runs)
    out = []
    for run, name in zip(runs, names):
        series = {c: run.series(c) if c in run.available() else None
                  for c in ("epoch", "bits", "payload_bits")}
        values = run.series(metric)
        for eps in eps_list:
            i = first_below(run, metric, eps)
            row = {"run": name, "eps": eps, "reached": i is not None,
                   "log_every": run.log_every}
            if i is None:
                best = min((v for v in values if v is not None), default=None)
                row.update(step=None, epoch=None, bits=None, payload_bits=None, time_s=None,
                           value=best)
            else:
                rec = run.records[i]
                row.update(step=rec["step"], time_s=rec.get("time_s"), value=values[i],
                           **{c: series[c][i] if series[c] else None
                              for c in ("epoch", "bits", "payload_bits")})
            out.append(row)
    return out


def _cell(col, v) -> str:
    if v is None:
        return "-"
    if col == "reached":
        return "yes" if v else "no"
    if col in ("bits", "payload_bits"):
        return f"{v:.4g}" if v >= 1e5 else f"{v:.0f}"
    if isinstance(v, float):
        return f"{v:.4g}" if col in ("epoch", "time_s") else f"{v:.3e}"
    return str(v)


def note(metric, rws) -> str:
    cad = sorted({r["log_every"] for r in rws if r["log_every"]})
    every = "/".join(str(c) for c in cad) or "?"
    return (f"first logged record with {metric} <= eps, resolved at the logging cadence "
            f"(every {every} steps: the crossing lies up to one interval earlier); bits include "
            f"headers, up + down; payload_bits excludes them where the run counts it; "
            f"not reached: value is the best {metric} logged")


def render(rws, fmt: str, metric="subopt") -> str:
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in rws:
            w.writerow({c: "" if r[c] is None else r[c] for c in COLUMNS})
        return buf.getvalue()
    cols = [c for c in COLUMNS if c != "log_every"]
    head = [c if c != "value" else metric for c in cols]
    cells = [[_cell(c, r[c]) for c in cols] for r in rws]
    if fmt == "md":
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines) + f"\n\n*{note(metric, rws)}.*\n"
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines) + f"\n({note(metric, rws)})\n"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ReportError(f"{message} (see psgd report --help)")


def main(argv=None) -> int:
    p = _Parser(prog="psgd report", description="Iterations, bits and time to each eps.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--eps", default="1e-2,1e-4,1e-6")
    p.add_argument("--metric", default="subopt", help=f"one of {', '.join(METRICS)}")
    p.add_argument("--format", default="text", help=f"one of {', '.join(FORMATS)}")
    try:
        a = p.parse_args(argv)
        if a.format not in FORMATS:
            raise ReportError(f"--format: got {a.format!r}; allowed: {', '.join(FORMATS)}")
        if a.metric not in METRICS:
            raise ReportError(f"--metric: got {a.metric!r}; allowed: {', '.join(METRICS)}")
        eps = parse_eps(a.eps)
        runs = load_runs(a.runs)
        for r in runs:
            r.series(a.metric)
        text = render(rows(runs, eps, a.metric), a.format, a.metric)
    except (ReportError, RunDirError) as exc:
        print(f"psgd: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
