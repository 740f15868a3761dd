"""Albasyoni, Safaryan, Condat & Richtarik (optimal gradient compression): bytes to 1e-4 for
spherical compression and sparse dithering against "Basic" and the best top-k (papers.md D.2).

Every method runs twice over: with its own ``stepsize: theory`` (the rule its guarantee proves,
which differs between compressors) and through the same step-size search (a grid of multiples
of 1/L), where each method keeps its cheapest step. The verdict is taken on the search, the
one comparison that treats every method alike."""

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

#: the poster's Basic byte counts at 4 bytes a coordinate: the iterations Basic needs there
POSTER_BASIC_STEPS = {"ridge": 62e3 / (14 * 4), "logistic": 13.5e3 / (10 * 4)}

# The poster's data sets (bodyfat, breast-cancer) are not in the project's data: synthetic
# stand-ins of the same shapes, with their features' covariance conditioned (data.condition,
# l2 near 1/condition) so that Basic needs as many iterations as the poster's byte counts imply
# (~1100 and ~340). Gaussian features with an identity covariance need 3-4 iterations, and with
# a handful of iterations no compressor can win back its bits (see the report's why).
PROBLEMS = {
    "ridge": ("ridge 252 x 14", ["problem={name: least_squares, l2: 0.0004}",
                                 "data={source: synthetic, n_samples: 252, n_features: 14, "
                                 "noise: 0.1, condition: 2500}"], 14, 0.15),
    "logistic": ("logistic 683 x 10", ["problem={name: logistic, l2: 0.0006}",
                                       "data={source: synthetic, n_samples: 683, n_features: "
                                       "10, noise: 0.1, condition: 1600}"], 10, 0.2),
}

#: the step-size search, the same for every method: gamma = c / L. 1.9 is just below GD's
#: limit 2/L on a quadratic (its best step 2/(mu+L) ~ 2/L here); L is a global bound, and
#: logistic's curvature near x* is smaller, so larger steps are searched too. Runs that diverge
#: count as not reaching eps
STEPS = (0.5, 1.0, 1.5, 1.9, 2.5, 3.5)
QUICK_STEPS = (1.9,)
ITERATIONS, QUICK_ITERATIONS = 6000, 3000
NEW = ("spherical", "sd-biased", "sd-unbiased")


def _variants(quick):
    v = []
    for key, (label, sets, d, alpha) in PROBLEMS.items():
        def add(name, text, comp):
            v.append(Variant(f"{key}-{name}", f"{label}: {text}", sets + [f"compressor={comp}"],
                             ranks=2))
        add("basic", "Basic (float32)", "{name: identity, dtype: float32}")
        # k = d - 1 sends more than the float64 vector (psgd refuses it); k = d is Basic
        ks = sorted({1, max(1, d // 4), d // 2}) if quick else range(1, d - 1)
        for k in ks:
            add(f"top{k}", f"top-{k}", f"{{name: top_k, k: {k}}}")
        add("spherical", f"spherical alpha {alpha}",
            f"{{name: spherical, alpha: {alpha}, block_size: {(d + 1) // 2}}}")
        add("sd-biased", "sparse dithering, deterministic nu 0.1",
            "{name: sparse_dithering, variant: deterministic, nu: 0.1}")
        add("sd-unbiased", "sparse dithering, randomized omega 0.25",
            "{name: sparse_dithering, variant: randomized, omega: 0.25}")
    return v


def _searched(variants, L, steps):
    """Each variant again at gamma = c / L for every c of the search (L of its problem)."""
    return {(v.name, c): Variant(f"{v.name}@{c:g}L", f"{v.label}, step {c:g}/L",
                                 v.sets + [f"algorithm.stepsize={c / L[v.name.split('-')[0]]!r}"],
                                 ranks=v.ranks)
            for v in variants for c in steps}


def _to_eps(run):
    """(payload bytes up, steps) at the first logged step with dist2 <= EPS, or (None, None)."""
    for r in run.records:
        if r.get("dist2") is not None and r["dist2"] <= EPS:
            return r["payload_bits_up"] / 8, r["step"]
    return None, None


def _gains(R, key):
    """Reference (the fewer bytes of Basic and the best top-k) and each new compressor's gain."""
    tops = {nm: m for nm, m in R.items() if nm.startswith(f"{key}-top") and m["bytes"]}
    best = min(tops, key=lambda nm: tops[nm]["bytes"]) if tops else None
    top_bytes = tops[best]["bytes"] if best else None
    refs = [b for b in (R[f"{key}-basic"]["bytes"], top_bytes) if b]
    ref = min(refs) if refs else None
    s = {"best_topk": best, "basic_bytes": R[f"{key}-basic"]["bytes"], "reference_bytes": ref,
         "best_topk_bytes": top_bytes}
    for new in NEW:
        b = R[f"{key}-{new}"]["bytes"]
        s[f"{new}_gain"] = ref / b if (b and ref) else None
    return s


def run(out, quick, jobs, extra=()):
    out.mkdir(parents=True, exist_ok=True)
    cfg = config_path("albasyoni.yaml")
    common = [f"run.iterations={QUICK_ITERATIONS if quick else ITERATIONS}"]
    variants = _variants(quick)
    theory = run_variants(cfg, variants, out / "runs", jobs, common, extra)
    L = {key: theory[f"{key}-basic"].summary["L"] for key in PROBLEMS}
    steps = QUICK_STEPS if quick else STEPS
    grid = _searched(variants, L, steps)
    searched = run_variants(cfg, list(grid.values()), out / "runs", jobs, common, extra,
                            may_diverge=True)

    by = {"theory": {}, "search": {}}
    same = {c: {} for c in steps}  # every method at one and the same step c/L
    for v in variants:
        b, n = _to_eps(theory[v.name])
        by["theory"][v.name] = {"bytes": b, "steps": n,
                                "stepsize": theory[v.name].summary["stepsize"]}
        tried = []
        for c in steps:
            r = searched[grid[v.name, c].name]
            b, n = _to_eps(r)
            same[c][v.name] = {"bytes": b, "steps": n}
            if b:
                tried.append((b, n, c))
        b, n, c = min(tried) if tried else (None, None, None)
        by["search"][v.name] = {"bytes": b, "steps": n, "c": c}
    summary = {how: {key: _gains(R, key) for key in PROBLEMS} for how, R in by.items()}
    summary["same_step"] = {f"{c:g}/L": {key: _gains(R, key) for key in PROBLEMS}
                            for c, R in same.items()}
    result = {"runs": by, "summary": summary, "L": L, "steps": list(steps)}

    rows = []
    T, S = by["theory"], by["search"]
    for key, (label, *_rest) in PROBLEMS.items():
        st, ss = summary["theory"][key], summary["search"][key]
        names = [f"{key}-basic", *(nm for nm in (st["best_topk"], ss["best_topk"]) if nm),
                 *(f"{key}-{new}" for new in NEW)]
        for nm in dict.fromkeys(names):  # once each, in this order
            t, s = T[nm], S[nm]
            rows.append([label, nm.split("-", 1)[1], f"{t['stepsize']:.3g}", t["steps"] or "-",
                         sci(t["bytes"]), _ratio(st["reference_bytes"], t["bytes"]),
                         f"{s['c']:g}/L" if s["c"] else "-", s["steps"] or "-",
                         sci(s["bytes"]), _ratio(ss["reference_bytes"], s["bytes"])])
    measured = md_table(
        ["problem", "compressor", "theory step", "steps", "bytes", "gain",
         "searched step", "steps", "bytes", "gain"], rows)
    measured += (
        f"\n\nSteps and bytes to dist2 = ||x - x*||^2/||x0 - x*||^2 <= {EPS:g}; bytes are the "
        "compressor's payload up (psgd's 8-byte codec header and 32-byte message envelope left "
        "out, as the poster counts only the code); gain = min(Basic, best top-k) / bytes, in "
        "the same column group. Theory: each method's `stepsize: theory` of cgd (2/(mu+L) for "
        "Basic, 2/((mu+L)(1+2 omega)) for the unbiased sparse dithering, 1/L for the "
        "contractions). Searched: the same grid gamma in {"
        + ", ".join(f"{c:g}" for c in steps) + "}/L for every method, each keeping its cheapest "
        "step (L = " + ", ".join(f"{L[k]:.4g} ({k})" for k in PROBLEMS) + "). Best top-k: the "
        "k with the fewest bytes among those run (k = 1 .. d - 2).")

    gains = [g for s in summary["search"].values() for k, g in s.items() if k.endswith("_gain")]
    ok_fewer = all(g is not None and g > 1 for g in gains)
    ok_5x = all(g is not None and g >= 5 for g in gains)
    near_5x = all(g is not None and g >= 4 for g in gains)
    result["checks"] = {"every_new_compressor_fewer_bytes": ok_fewer, "all_5x": ok_5x,
                        "all_4x": near_5x}
    verdict = ("reproduced" if ok_5x else
               "partly (every new compressor 4-5x below Basic and top-k, not everywhere 5x)"
               if near_5x else "partly (fewer bytes than Basic and top-k, not 5x)"
               if ok_fewer else "not reproduced")
    why = _why(by, summary, steps)
    _figure(out, variants, searched, grid, by["search"], summary["search"])
    setup = setup_text(cfg, variants, common, 2,
                       "One worker (single node), full gradients. Each variant runs once with "
                       "the base config's `stepsize: theory` (`runs/<name>`) and once per "
                       "searched step (`runs/<name>@<c>L`, `--set algorithm.stepsize=c/L`).")
    return write_report(out, title=f"albasyoni{' (quick)' if quick else ''}: {PAPER}",
                        claim=CLAIM, setup=setup, measured=measured,
                        figures=[("albasyoni_bytes.png", "||x - x*||^2/||x0 - x*||^2 against "
                                  "payload bytes up, both problems, each method at its "
                                  "searched step")],
                        verdict=verdict, why=why, result=result)


def _why(by, summary, steps):
    def gains(per_problem):
        return "; ".join(f"{key}: " + ", ".join(f"{k[:-5]} {_f(g)}{'x' if g else ''}"
                                               for k, g in s.items() if k.endswith("_gain"))
                         for key, s in per_problem.items())

    S = by["search"]
    basic = ", ".join(f"{S[k + '-basic']['steps']} ({k}; the poster's byte counts imply "
                      f"~{POSTER_BASIC_STEPS[k]:.0f})" for k in PROBLEMS)
    return (
        f"Gains over min(Basic, best top-k) with the same step search for every method: "
        f"{gains(summary['search'])}. With each method's theory step: "
        f"{gains(summary['theory'])}. With every method at one and the same step: "
        + " | ".join(f"{c}: {gains(g)}" for c, g in summary["same_step"].items()) + ". "
        "The data are synthetic stand-ins of the poster's shapes (bodyfat and breast-cancer are "
        "not in the project's data), conditioned so that Basic needs about the iterations the "
        f"poster's byte counts imply: Basic reaches {EPS:g} in {basic} steps. That is the "
        "reason found for the gap of the earlier, isotropic stand-ins (Gaussian features with "
        "an identity covariance, kappa near 1-2): there Basic needed 3-4 iterations, and "
        "a compressor that costs a few more iterations (its contraction delta or variance "
        "omega) cannot win back its bits in so few; the gains then were ridge 2.3-3.9x, "
        "logistic 0.55-1.3x. The step rule matters as much: the theory rules differ by "
        "method (Basic's 2/(mu+L) is twice the contractions' 1/L), so with theory steps "
        "Basic takes about half the iterations it takes at 1/L, the rule under which the "
        "poster's CGD is analysed. Per message a new compressor sends "
        + ", ".join(f"{_f(_per_step(S, f'{k}-basic') / _per_step(S, f'{k}-{new}'))}x"
                    for k in PROBLEMS for new in NEW
                    if _per_step(S, f"{k}-{new}") and _per_step(S, f"{k}-basic"))
        + " fewer bytes than Basic (ridge, then logistic; spherical, biased, unbiased sparse "
        "dithering); it needs "
        + ", ".join(f"{_f(S[f'{k}-{new}']['steps'] / S[f'{k}-basic']['steps'])}x"
                    for k in PROBLEMS for new in NEW
                    if S[f"{k}-{new}"]["steps"] and S[f"{k}-basic"]["steps"])
        + " its iterations; the gain is the first over the second. So the per-message ratio is "
        "the most a compressor can gain while it needs Basic's iterations, and where it is "
        "below 5 (spherical at alpha " + " / ".join(f"{PROBLEMS[k][3]:g}" for k in PROBLEMS)
        + " on d = " + " / ".join(str(PROBLEMS[k][2]) for k in PROBLEMS)
        + ") 5x cannot be reached. And a "
        "searched step can help Basic and top-k more than the new compressors (the best "
        "top-k's searched steps: " + ", ".join(
            f"{k} {S[summary['search'][k]['best_topk']]['c']:g}/L" for k in PROBLEMS
            if summary["search"][k]["best_topk"]) + "), and then the search gives smaller gains "
        "than one common step. The poster's best top-k is only ~20 % below Basic; best top-k "
        "bytes / Basic bytes here: searched " + _topk_vs_basic(summary["search"]) + "; at a "
        "common step " + " | ".join(f"{c}: {_topk_vs_basic(g)}"
                                    for c, g in summary["same_step"].items()) + ".")


def _topk_vs_basic(per_problem):
    """Best top-k's bytes over Basic's, per problem ("-" where either missed eps)."""
    return ", ".join(f"{_ratio(s['best_topk_bytes'], s['basic_bytes'])} ({k})"
                     for k, s in per_problem.items())


def _per_step(R, name):
    m = R[name]
    return m["bytes"] / m["steps"] if m["bytes"] else None


def _ratio(ref, b):
    return _f(ref / b) if (ref and b) else "-"


def _f(v):
    return "-" if v is None else f"{v:.3g}"


def _figure(out, variants, searched, grid, best, summary):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, key in zip(axes, PROBLEMS):
        top = summary[key]["best_topk"]
        for v in variants:
            if not v.name.startswith(key) or ("-top" in v.name and v.name != top):
                continue
            c = best[v.name]["c"]
            if c is None:
                continue
            r = searched[grid[v.name, c].name]
            pts = [(b / 8, d) for b, d in zip(r.series("payload_bits_up"), r.series("dist2"))
                   if d and d > 0 and b]
            if pts:
                ax.plot(*zip(*pts), label=f"{v.label.split(': ', 1)[1]} ({c:g}/L)")
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
                 "logistic 683x10 (synthetic stand-ins of those shapes, conditioned)", run=run),
]
