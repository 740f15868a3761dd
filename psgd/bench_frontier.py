"""``psgd bench frontier``: every registered compressor on the bits / variance plane.

For each compressor and each entry of its ``examples``, on random Gaussian vectors of
length ``--dim``, it measures

* bits per coordinate: the payload, i.e. ``8 * len(message) - 64`` (psgd's 8-byte codec
  header, which only carries d, is left out), divided by d; shared-seed compressors use
  the runtime's key, so no seed travels;
* the normalized error E||C(x) - x||^2 / ||x||^2; for unbiased compressors also after
  the 1/(1 + omega) scaling (omega the compressor's own omega(d)), which puts them in
  the biased class B(omega/(1+omega)) (an unbiased C with variance omega gives
  E||C(x)/(1+omega) - x||^2 <= omega/(1+omega) ||x||^2);

and prints them beside two lower bounds on the bits b (per vector) that any compressor
with error alpha needs, at the measured alpha (the scaled one for unbiased compressors):

* UP: the uncertainty principle of Safaryan, Shulgin & Richtarik, "Uncertainty principle
  for communication compression in distributed and federated learning and the search for
  an optimal compressor" (2021): b >= (d/2) log2(1/alpha), i.e. alpha >= 4^(-b/d);
* ACA: the average-case bound of Albasyoni, Safaryan, Condat & Richtarik, "Optimal gradient
  compression for distributed and federated learning" (2020): b >= -log2 P(alpha, d), P the
  probability that a uniform direction lands in the cap of
  :func:`psgd.compressors.spherical.log2_cap_probability`.

Output: an aligned text table (stdout), ``--json FILE`` and ``--out FILE.png`` (matplotlib,
Agg; log-log axes that hold every measured point, one colour and marker per compressor, the
legend beside the axes). Compressors that fail to construct or to run are skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np

#: parameters that name a curve (the others are swept along it)
SERIES_KEYS = ("variant", "block_size", "norm", "dtype", "encoding")


def _parser():
    p = argparse.ArgumentParser(prog="psgd bench frontier",
                                description="Measured bits/coordinate and normalized variance of "
                                            "every registered compressor's examples beside the "
                                            "uncertainty-principle (Safaryan et al. 2021) and "
                                            "average-case (Albasyoni et al. 2020) lower bounds; "
                                            "see the psgd.bench_frontier docstring.")
    p.add_argument("--dim", type=int, default=64, help="vector length d (default 64)")
    p.add_argument("--trials", type=int, default=40, help="random vectors per setting (default 40)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default=None, help="comma-separated compressor names")
    p.add_argument("--out", default=None, metavar="FILE.png", help="write the plot here")
    p.add_argument("--json", default=None, metavar="FILE", help="write the rows here")
    return p


def _settings(cls):
    """The configs to try for one compressor: its examples, else {} (the defaults)."""
    return list(cls.examples) or [{}]


def _theory(c, d):
    try:
        return ("omega", float(c.omega(d))) if c.unbiased else ("delta", float(c.delta(d)))
    except Exception:  # noqa: BLE001 - not every compressor states one
        return ("omega" if c.unbiased else "delta", float("nan"))


def measure(c, d: int, trials: int, rng: np.random.Generator) -> dict:
    """Mean payload bits/coordinate and normalized errors of compressor c on Gaussian vectors."""
    bits, err, err_scaled = [], [], []
    kind, theo = _theory(c, d)
    scale = 1.0 / (1.0 + theo) if (c.unbiased and math.isfinite(theo)) else 1.0
    for t in range(trials):
        x = rng.standard_normal(d)
        key = (1_000_003 * t + 7) if c.shared_randomness else None
        buf = c.encode(x, rng, key=key)
        y = c.decode(buf, key=key, d=d)
        nx = float(x @ x)
        bits.append((8 * len(buf) - 64) / d)
        err.append(float(((y - x) ** 2).sum()) / nx)
        err_scaled.append(float(((scale * y - x) ** 2).sum()) / nx)
    return {"bits_per_coord": float(np.mean(bits)), "bits_per_coord_max": float(np.max(bits)),
            "err": float(np.mean(err)), "err_max": float(np.max(err)),
            "alpha": float(np.mean(err_scaled if c.unbiased else err)), kind: theo,
            "unbiased": bool(c.unbiased)}


def bounds(alpha: float, bits_per_coord: float, d: int) -> dict:
    """The §C lower bounds at the measured alpha and rate."""
    from .compressors.spherical import log2_cap_probability
    out = {"alpha_min_UP": 4.0 ** (-bits_per_coord)}
    if 0 < alpha < 1:
        out["bits_UP"] = 0.5 * math.log2(1.0 / alpha)
        out["bits_ACA"] = -log2_cap_probability(alpha, d) / d
    else:
        out["bits_UP"] = out["bits_ACA"] = float("nan") if alpha >= 1 else float("inf")
    return out


def run(d: int, trials: int, seed: int, only=None):
    from .compressors import compressor_classes
    rows, notes = [], []
    rng = np.random.default_rng(seed)
    for name, cls in sorted(compressor_classes().items()):
        if only and name not in only:
            continue
        ok = 0
        settings = _settings(cls)
        for params in settings:
            try:
                c = cls(**params)
            except Exception as exc:  # noqa: BLE001 - reported as a note
                notes.append(f"{name}({_fmt(params)}): skipped, does not construct: {exc}")
                continue
            try:
                t0 = time.perf_counter()
                m = measure(c, d, trials, rng)
                m["seconds"] = time.perf_counter() - t0
            except Exception as exc:  # noqa: BLE001
                notes.append(f"{name}({_fmt(params)}): skipped, failed at d={d}: "
                             f"{type(exc).__name__}: {exc}")
                continue
            rows.append({"compressor": name, "params": params, **m,
                         **bounds(m["alpha"], m["bits_per_coord"], d)})
            ok += 1
        if not ok and {} not in settings:  # e.g. a plug-in whose examples do not fit it
            try:
                c = cls()
                m = measure(c, d, trials, rng)
                rows.append({"compressor": name, "params": {}, **m,
                             **bounds(m["alpha"], m["bits_per_coord"], d)})
            except Exception:  # noqa: BLE001 - already noted above
                pass
    return rows, notes


def _fmt(params):
    return ",".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def table(rows, d) -> str:
    head = ["compressor", "params", "class", "bits/coord", "E err/|x|^2", "alpha", "4^-b",
            "UP bits", "ACA bits", "bits/ACA", "omega|delta"]
    lines = []
    for r in rows:
        theo = r.get("omega", r.get("delta", float("nan")))
        aca = r["bits_ACA"]
        lines.append([r["compressor"], _fmt(r["params"]) or "-", "U" if r["unbiased"] else "B",
                      f"{r['bits_per_coord']:.3f}", f"{r['err']:.4g}", f"{r['alpha']:.4g}",
                      f"{r['alpha_min_UP']:.3g}", f"{r['bits_UP']:.3f}", f"{aca:.3f}",
                      f"{r['bits_per_coord'] / aca:.2f}" if 0 < aca < float("inf") else "-",
                      f"{theo:.4g}"])
    widths = [max(len(h), *(len(li[i]) for li in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 3 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    out = [f"# d = {d}; bits = payload bits per coordinate (8-byte codec header excluded); "
           "alpha = E||C(x)-x||^2/||x||^2, for unbiased (U) compressors after scaling by 1/(1+omega);",
           "# lower bounds at that alpha: UP = (1/2) log2(1/alpha), ACA = -log2 P(alpha, d) / d; "
           "4^-b = the smallest alpha the UP allows at the measured rate",
           fmt(head), fmt(["-" * w for w in widths])]
    out += [fmt(li) for li in lines]
    return "\n".join(out)


#: one colour and one marker per compressor (13 of each before they repeat): the 10 Tableau
#: colours and three that none of them resembles
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#000080", "#b8860b", "#ff00ff")
MARKERS = "osD^vP*X<>phd"
#: the curves of one compressor (its SERIES_KEYS settings) differ by line style
LINESTYLES = ("-", "--", ":", "-.")


def _series(rows, d):
    """{compressor: {curve label: sorted [(bits, alpha)]}}; a block_size >= d is one block, as
    block_size null, so it does not start a curve of its own."""
    out = {}
    for r in rows:
        fixed = {k: v for k, v in r["params"].items() if k in SERIES_KEYS
                 and not (k == "block_size" and v is not None and v >= d)}
        label = r["compressor"] + (f" ({_fmt(fixed)})" if fixed else "")
        out.setdefault(r["compressor"], {}).setdefault(label, []).append(
            (r["bits_per_coord"], r["alpha"]))
    return {c: {lab: sorted(pts) for lab, pts in curves.items()} for c, curves in out.items()}


def figure(rows, d):
    """The frontier figure (log-log; every point inside the axes; legend right of them).

    A measured alpha of 0 (an exact code) cannot sit on a log axis: such points are drawn on
    the lower edge of the axes, with the marker filled white, and the legend says so.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .compressors.spherical import log2_cap_probability
    series = _series(rows, d)
    bits = [b for curves in series.values() for pts in curves.values() for b, _ in pts]
    alphas = [a for curves in series.values() for pts in curves.values() for _, a in pts]
    positive = [a for a in alphas if a > 0]
    ylo = min(positive + [1e-4]) / 4.0
    yhi = max(alphas + [1.0]) * 2.0
    xlo = min(bits + [1.0]) / 1.5
    xhi = max(bits + [8.0]) * 1.5
    fig, ax = plt.subplots(figsize=(11, 6.5))
    for i, (comp, curves) in enumerate(sorted(series.items())):
        colour, marker = COLOURS[i % len(COLOURS)], MARKERS[i % len(MARKERS)]
        for j, (label, pts) in enumerate(sorted(curves.items())):
            xs = [b for b, _ in pts]
            ys = [a if a > 0 else ylo for _, a in pts]
            exact = any(a <= 0 for _, a in pts)
            ax.plot(xs, ys, color=colour, marker=marker, ls=LINESTYLES[j % len(LINESTYLES)],
                    lw=1.0, ms=6, mfc="white" if exact else colour, clip_on=False,
                    label=label + (" [alpha = 0, on the lower edge]" if exact else ""))
    b = np.logspace(math.log10(xlo), math.log10(xhi), 400)
    ax.plot(b, 4.0 ** (-b), "k--", lw=1.2, label="UP: alpha = 4^(-b/d)")
    a = np.logspace(math.log10(ylo), math.log10(0.999), 300)
    ax.plot([-log2_cap_probability(float(v), d) / d for v in a], a, "k:", lw=1.5,
            label=f"ACA: b = -log2 P(alpha, {d})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(xlo, xhi)
    ax.set_ylim(ylo, yhi)
    ax.set_xlabel("payload bits per coordinate")
    ax.set_ylabel("alpha = E||C(x)-x||^2/||x||^2 (unbiased: after 1/(1+omega))")
    ax.set_title(f"Compression frontier, d = {d} (Gaussian vectors)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
              ncol=1 if len(ax.get_lines()) <= 34 else 2)
    fig.tight_layout()
    return fig


def plot(rows, d, path):
    import matplotlib.pyplot as plt

    fig = figure(rows, d)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.dim < 2 or args.trials < 1:
        print("psgd bench frontier: error: --dim must be >= 2 and --trials >= 1", file=sys.stderr)
        return 2
    only = set(args.only.split(",")) if args.only else None
    t0 = time.perf_counter()
    rows, notes = run(args.dim, args.trials, args.seed, only)
    print(table(rows, args.dim))
    for n in notes:
        print(f"# note: {n}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"dim": args.dim, "trials": args.trials, "seed": args.seed, "rows": rows,
                       "notes": notes}, fh, indent=1, default=float)
    if args.out:
        try:
            plot(rows, args.dim, args.out)
        except ImportError as exc:
            print(f"psgd bench frontier: error: the plot needs matplotlib ({exc}); "
                  "pip install 'psgd[plot]'", file=sys.stderr)
            return 1
    print(f"# {len(rows)} settings in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
