"""``psgd plot RUN_DIR... --x step --y subopt --out FIG.png``: runs on one axis.

One line per run, labelled by what differs between the runs' configs; the y axis is
logarithmic for the quantities that decay over orders of magnitude (suboptimality,
distances, gradient norms), linear for loss and accuracy. Records whose value cannot be
drawn on a log axis (f - f* <= 0 once the run has hit the optimum to machine precision)
are left out of that line, not clipped to an invented floor.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from .results import RunDirError, labels, load_runs

X_CHOICES = ("step", "epoch", "bits", "bits_up", "bits_down", "payload_bits", "time")
Y_CHOICES = ("subopt", "rel_subopt", "dist2", "loss", "grad_norm", "test_accuracy")
LOG_Y = {"subopt", "rel_subopt", "dist2", "grad_norm"}
FORMATS = (".png", ".pdf", ".svg")

X_LABEL = {"step": "server steps", "epoch": "epochs (samples processed / dataset size)",
           "bits": "bits sent, up + down (headers included)", "bits_up": "bits up (workers to "
           "server, headers included)", "bits_down": "bits down (server to workers)",
           "payload_bits": "payload bits, up + down (headers excluded)", "time": "wall time (s)"}
Y_LABEL = {"subopt": "f(x) - f*", "rel_subopt": "(f(x) - f*) / (f(x0) - f*)",
           "dist2": "||x - x*||^2 / ||x0 - x*||^2", "loss": "f(x)",
           "grad_norm": "||grad f(x)||", "test_accuracy": "test accuracy"}
#: metrics.jsonl names of the x choices that are not named as logged
X_METRIC = {"time": "time_s"}


class PlotError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise PlotError(f"{message} (see psgd plot --help)")


def _parser():
    p = _Parser(prog="psgd plot", description="Plot runs on one axis.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--x", default="step", help=f"one of {', '.join(X_CHOICES)} (default step)")
    p.add_argument("--y", default="subopt", help=f"one of {', '.join(Y_CHOICES)} "
                                                 f"(default subopt)")
    p.add_argument("--out", default="plot.png", help="the figure: .png, .pdf or .svg")
    p.add_argument("--title", default=None)
    return p


def figure(runs, x: str, y: str, out, title=None, names=None) -> Path:
    """Draw ``y`` against ``x`` for every run into ``out``; return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = names or labels(runs)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    for run, name in zip(runs, names):
        xs = run.series(X_METRIC.get(x, x))
        ys = run.series(y)
        pts = [(a, b) for a, b in zip(xs, ys) if _drawable(a) and _drawable(b, y in LOG_Y)]
        if not pts:
            raise PlotError(f"{run.name}: no record has a {y} that can be drawn"
                            + (" on a log axis (all <= 0)" if y in LOG_Y else ""))
        ax.plot(*zip(*pts), label=name, marker="." if len(pts) < 30 else None)
    if y in LOG_Y:
        ax.set_yscale("log")
    ax.set_xlabel(X_LABEL[x])
    ax.set_ylabel(Y_LABEL[y])
    if title:
        ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _drawable(v, positive=False) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and (v > 0 or not positive)


def main(argv=None) -> int:
    try:
        a = _parser().parse_args(argv)
        if a.x not in X_CHOICES:
            raise PlotError(f"--x: got {a.x!r}; allowed: {', '.join(X_CHOICES)}")
        if a.y not in Y_CHOICES:
            raise PlotError(f"--y: got {a.y!r}; allowed: {', '.join(Y_CHOICES)}")
        if Path(a.out).suffix.lower() not in FORMATS:
            raise PlotError(f"--out: got {a.out!r}; allowed: a file name ending in "
                            f"{', '.join(FORMATS)}")
        runs = load_runs(a.runs)
        for r in runs:  # every run must have both metrics before anything is drawn
            r.series(X_METRIC.get(a.x, a.x))
            r.series(a.y)
        out = figure(runs, a.x, a.y, a.out, a.title)
    except (PlotError, RunDirError) as exc:
        print(f"psgd: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({len(runs)} runs, {a.y} against {a.x})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
