"""Albasyoni, Safaryan, Condat & Richtarik (optimal gradient compression): bytes to 1e-4 for
spherical compression and sparse dithering against "Basic" and the best top-k (papers.md D.2)."""

from __future__ import annotations

from . import Reproduction
from .common import Variant, config_path, md_table, run_variants, sci, setup_text, write_report

PAPER = "Albasyoni, Safaryan, Condat & Richtarik (optimal gradient compression)"

CLAIM = (
    "Poster **[P]** (papers.md D.2): single-node compressed GD, ||x^t - x*||^2 / ||x^0 - x*||^2 "
    "against communicated bytes. Ridge regression on Body-Fat (252 x 14 **[R]**): Basic ~62 kB, "
    "best top-k ~50 kB, spherical (alpha 0.15) and sparse dithering (biased alpha 0.1, unbiased "
    "0.25) ~9-10 kB to reach 1e-4; logistic regression on Breast-Cancer (683 x 10 **[R]**): Basic "
    "~13.5 kB, top-k ~12 kB, spherical (alpha 0.2) ~2.5 kB, sparse dithering ~2.7 kB. Target: "
    "the new compressors need about 5-6x fewer bytes than Basic or top-k.")

EPS = 1e-4

PROBLEMS = {
    "ridge": ("ridge 252 x 14", ["problem={name: least_squares, l2: 0.01}",
                                 "data={source: synthetic, n_samples: 252, n_features: 14, "
                                 "noise: 0.1}"], 14, 0.15),
    "logistic": ("logistic 683 x 10", ["problem={name: logistic, l2: 0.01}",
                                       "data={source: synthetic, n_samples: 683, n_features: "
                                       "10, noise: 0.1}"], 10, 0.2),
}


def _variants(quick):
    v = []
    for key, (label, sets, d, alpha) in PROBLEMS.items():
        def add(name, text, comp):
            v.append(Variant(f"{key}-{name}", f"{label}: {text}", sets + [f"compressor={comp}"],
                             ranks=2))
        add("basic", "Basic (float32)", "{name: identity, dtype: float32}")
        ks = sorted({1, max(1, d // 4), d // 2}) if quick else range(1, d)
        for k in ks:
            add(f"top{k}", f"top-{k}", f"{{name: top_k, k: {k}}}")
        add("spherical", f"spherical alpha {alpha}",
            f"{{name: spherical, alpha: {alpha}, block_size: {(d + 1) // 2}}}")
        add("sd-biased", "sparse dithering, deterministic nu 0.1",
            "{name: sparse_dithering, variant: deterministic, nu: 0.1}")
        add("sd-unbiased", "sparse dithering, randomized omega 0.25",
            "{name: sparse_dithering, variant: randomized, omega: 0.25}")
    return v


def _bytes_to(run):
    for r in run.records:
        if r.get("dist2") is not None and r["dist2"] <= EPS:
            return r["payload_bits_up"] / 8, r["step"]
    return None, None


def run(out, quick, jobs, extra=()):
    out.mkdir(parents=True, exist_ok=True)
    cfg = config_path("albasyoni.yaml")
    common = [f"run.iterations={300 if quick else 1000}"]
    variants = _variants(quick)
    runs = run_variants(cfg, variants, out / "runs", jobs, common, extra)
    result, rows = {"runs": {}}, []
    for v in variants:
        r = runs[v.name]
        b, steps = _bytes_to(r)
        result["runs"][v.name] = {"bytes_to_eps": b, "steps_to_eps": steps,
                                  "stepsize": r.summary["stepsize"],
                                  "final_dist2": r.series("dist2")[-1],
                                  "final_subopt": r.series("subopt")[-1]}
    R = result["runs"]
    summary = {}
    for key, (label, _, d, _) in PROBLEMS.items():
        tops = {nm: m for nm, m in R.items() if nm.startswith(f"{key}-top") and m["bytes_to_eps"]}
        best = min(tops, key=lambda nm: tops[nm]["bytes_to_eps"]) if tops else None
        base = R[f"{key}-basic"]["bytes_to_eps"]
        ref = min(x for x in (base, tops[best]["bytes_to_eps"] if best else None) if x)
        s = {"best_topk": best, "basic": base, "reference": ref}
        for new in ("spherical", "sd-biased", "sd-unbiased"):
            b = R[f"{key}-{new}"]["bytes_to_eps"]
            s[f"{new}_gain"] = None if not b else ref / b
        summary[key] = s
        for nm in [f"{key}-basic", best, f"{key}-spherical", f"{key}-sd-biased",
                   f"{key}-sd-unbiased"]:
            if nm is None:
                continue
            m = R[nm]
            rows.append([label, nm.split("-", 1)[1], f"{m['stepsize']:.3g}",
                         m["steps_to_eps"] or "-", sci(m["bytes_to_eps"]),
                         _f(ref / m["bytes_to_eps"]) if m["bytes_to_eps"] else "-"])
    result["summary"] = summary
    measured = md_table(["problem", "compressor", "step", f"steps to dist2 {EPS:g}",
                         "payload bytes up to it", "gain over min(Basic, best top-k)"], rows)
    measured += ("\n\nBytes are the compressor's payload (psgd's 8-byte codec header and 32-byte "
                 "message envelope left out, as the poster counts only the code). Best top-k is "
                 "the k with the fewest bytes among those run.")
    gains = [g for s in summary.values() for k, g in s.items() if k.endswith("_gain")]
    ok_fewer = all(g is not None and g > 1 for g in gains)
    ok_5x = all(g is not None and g >= 5 for g in gains)
    result["checks"] = {"every_new_compressor_fewer_bytes": ok_fewer, "all_5x": ok_5x}
    wins = [key for key, s in summary.items()
            if all(g is not None and g > 1 for k, g in s.items() if k.endswith("_gain"))]
    result["checks"]["problems_where_all_new_win"] = wins
    verdict = ("reproduced" if ok_5x else "partly (fewer bytes than Basic and top-k, not 5x)"
               if ok_fewer else f"partly (fewer bytes on {', '.join(wins)} only, not 5x)"
               if wins else "not reproduced")
    why = ("Gains over min(Basic, best top-k): " + "; ".join(
        f"{key}: " + ", ".join(f"{k[:-5]} {_f(g)}x" for k, g in s.items() if k.endswith("_gain"))
        for key, s in summary.items()) + ". The data are synthetic stand-ins of the poster's "
        "shapes (bodyfat and breast-cancer are not in the project's data), so the byte counts "
        "are not the poster's; every run uses `stepsize: theory` of cgd (1/L for the biased "
        "compressors, the larger 2/(mu+L) for Basic), so the comparison favours Basic. "
        "Why the gains are smaller than the poster's: Basic reaches 1e-4 here in "
        + ", ".join(f"{R[k + '-basic']['steps_to_eps']} steps ({k})" for k in PROBLEMS)
        + ", while the poster's Basic byte counts imply about 62 kB / (14 x 4 B) ~ 1100 (ridge) "
          "and 13.5 kB / (10 x 4 B) ~ 340 (logistic) iterations: Gaussian synthetic features "
          "are well conditioned (kappa near 1-2), real Body-Fat / Breast-Cancer features are "
          "not. With a handful of iterations, a compressor that costs a few more iterations "
          "(its contraction delta, the steps column) cannot win back its bits per message.")
    _figure(out, variants, runs)
    setup = setup_text(cfg, variants, common, 2, "One worker (single node), full gradients.")
    return write_report(out, title=f"albasyoni{' (quick)' if quick else ''}: {PAPER}",
                        claim=CLAIM, setup=setup, measured=measured,
                        figures=[("albasyoni_bytes.png", "||x - x*||^2/||x0 - x*||^2 against "
                                  "payload bytes up, both problems")],
                        verdict=verdict, why=why, result=result)


def _f(v):
    return "-" if v is None else f"{v:.3g}"


def _figure(out, variants, runs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, key in zip(axes, PROBLEMS):
        for v in variants:
            if not v.name.startswith(key) or ("-top" in v.name and v.name != f"{key}-top1"
                                              and not v.name.endswith(("top3", "top5"))):
                continue
            r = runs[v.name]
            pts = [(b / 8, d) for b, d in zip(r.series("payload_bits_up"), r.series("dist2"))
                   if d and d > 0 and b]
            if pts:
                ax.plot(*zip(*pts), label=v.label.split(": ", 1)[1])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(EPS, color="k", lw=0.6, ls=":")
        ax.set_xlabel("payload bytes up")
        ax.set_ylabel("||x - x*||^2 / ||x0 - x*||^2")
        ax.set_title(PROBLEMS[key][0])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.savefig(out / "albasyoni_bytes.png", dpi=120)
    plt.close(fig)


REPRODUCTIONS = [
    Reproduction("albasyoni", PAPER,
                 "bytes to 1e-4: spherical, sparse ditherings, basic, best top-k; ridge 252x14, "
                 "logistic 683x10 (synthetic data of those shapes)", run=run),
]
