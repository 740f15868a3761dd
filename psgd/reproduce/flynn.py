"""Flynn, Johnstone & Yoo (arXiv 2411.12898): the iteration penalty of random linear sketches
follows lambda_S / ||L||, not the worst case d/k (papers.md B.5, D.4)."""

from __future__ import annotations

import numpy as np

from . import Reproduction
from .common import Variant, config_path, md_table, run_variants, setup_text, write_report

PAPER = "Flynn, Johnstone & Yoo (arXiv 2411.12898)"

CLAIM = (
    "Abstract **[P]**: the convergence of compressed (randomized linear sketch) gradient methods "
    "depends on the norm of the Hessian in a norm defined by the compression scheme, not on the "
    "worst case. The notes' form (papers.md B.5 **[D]**; the paper's exact constants are "
    "**[U]**): with lambda_S = lambda_max(E[(S^T S) L (S^T S)]) and step 1/lambda_S the "
    "iteration penalty against uncompressed GD is lambda_S / ||L||: about 1 + (1 + tr L/||L||)/k "
    "for Haar and Gaussian sketches (the effective rank), 1 + (d/k) max_i L_ii/||L|| for random "
    "coordinates (coherence: it suffers only when L is coordinate aligned), against the "
    "omega-only worst case d/k. Target D.4 (i)-(ii) **[D]**: quadratics with power-law, low-rank "
    "and flat spectra, diagonal and rotated; d = 1000, k = 10, lambda_i = 1/i gives a Haar "
    "factor of 1.84 against 100.")

SKETCHES = (("haar", "haar_sketch"), ("gauss", "gaussian_sketch"), ("coord", "coordinate_sketch"))
TOL = 1e-3   # (f - f*)/(f(x0) - f*) that every run is timed to


def _spectra(quick, d):
    power = ("power", "power law 1/i", ["problem.spectrum=power", "problem.exponent=1.0",
                                        "problem.mu=0.0"])
    # mu floors: d^-1 like the power law's smallest eigenvalue, so GD needs many steps too
    low = ("lowrank", "rank 10 (+ 1/d floor)", ["problem.spectrum=lowrank", "problem.rank=10",
                                                f"problem.mu={1.0 / d!r}"])
    flat = ("flat", "flat (linear in [1/d, 1])", ["problem.spectrum=linear",
                                                 f"problem.mu={1.0 / d!r}"])
    return [power, low] if quick else [power, low, flat]


def _variants(quick, d, k):
    v = []
    for sp, sp_label, sp_sets in _spectra(quick, d):
        for rot in (False, True):
            if quick and sp != "power" and rot:
                continue
            where = "rotated" if rot else "diagonal"
            # GD on this very problem: rotating H but not the center changes x0 - x* in H's
            # eigen-coordinates, and with it GD's steps (by 34 % at d = 200, flat, 1e-6)
            v.append(Variant(f"{sp}-{'rot' if rot else 'diag'}-gd",
                             f"{sp_label}, {where}: GD (step 1/L)",
                             sp_sets + [f"problem.rotate={str(rot).lower()}",
                                        "compressor={name: identity}", "algorithm.stepsize=1.0"],
                             ranks=2))
            for short, name in SKETCHES:
                if quick and sp != "power" and short != "haar":
                    continue
                v.append(Variant(f"{sp}-{'rot' if rot else 'diag'}-{short}",
                                 f"{sp_label}, {where}: {name}",
                                 sp_sets + [f"problem.rotate={str(rot).lower()}",
                                            f"compressor={{name: {name}, k: {k}}}"], ranks=2))
    return v


def _target(cfg_path, sets):
    """TOL * (f(x0) - f*) for the config these overrides make (x0 = 0, f* in closed form)."""
    from ..config import load
    from ..problems import make_problem

    cfg = load(cfg_path, sets)
    ps = make_problem(cfg["problem"], cfg["data"], cfg["seed"], 1)
    g = ps.global_objective
    return TOL * (g.value(ps.initial_point()) - g.const)


def _problem(run):
    from ..problems import make_problem

    cfg = run.config
    return make_problem(cfg["problem"], cfg["data"], cfg["seed"], 1)


def _steps_to_tol(run):
    for r in run.records:
        if r["rel_subopt"] is not None and r["rel_subopt"] <= TOL:
            return r["step"]
    return None


def run(out, quick, jobs, extra=()):
    out.mkdir(parents=True, exist_ok=True)
    cfg = config_path("flynn.yaml")
    # d = 500 in the full form, not the notes' 1000: coordinates on a coordinate-aligned power
    # law need about d/k times GD's steps, and GD's grow with d (the 1/i tail)
    d, k = (200, 10) if quick else (500, 10)
    common = [f"problem.n_features={d}", f"run.iterations={10000 if quick else 50000}",
              f"run.log_every={1 if quick else 5}"]
    variants = _variants(quick, d, k)
    for v in variants:  # every run stops at TOL (run.target is absolute: f - f*)
        v.sets.append(f"run.target={_target(cfg, [*common, *v.sets, *extra])!r}")
    runs = run_variants(cfg, variants, out / "runs", jobs, common, extra)
    rows, result = [], {"runs": {}}
    base = {}
    for v in variants:
        r = runs[v.name]
        steps = _steps_to_tol(r)
        m = {"steps_to_tol": steps, "stepsize": r.summary["stepsize"],
             "rule": r.summary["stepsize_rule"], "final_rel_subopt": r.series("rel_subopt")[-1],
             "final_subopt": r.series("subopt")[-1]}
        if v.name.endswith("-gd"):
            base[v.name.rsplit("-", 1)[0]] = steps  # per spectrum and rotation
        else:
            ps = _problem(r)
            H = ps.local(0).hessian()
            from ..compressors import get_compressor
            comp = get_compressor(r.config["compressor"])
            L = float(np.linalg.eigvalsh(H)[-1])
            m["predicted"] = comp.smoothness_norm(H) / L
            m["worst_case"] = 1.0 + comp.omega(d)
            m["trace_ratio"] = float(np.trace(H)) / L
            m["max_diag_ratio"] = float(np.max(np.diag(H))) / L
        result["runs"][v.name] = m
    for v in variants:
        m = result["runs"][v.name]
        if "predicted" in m:
            gd = base[v.name.rsplit("-", 1)[0]]
            m["measured"] = None if (m["steps_to_tol"] is None or not gd) else m["steps_to_tol"] / gd
        rows.append([v.label, f"{m['stepsize']:.4g}", m["steps_to_tol"] or "-",
                     _f(m.get("measured")), _f(m.get("predicted")), _f(m.get("worst_case")),
                     _f(m.get("measured") / m["predicted"] if m.get("measured") else None)])
    measured = md_table(["run", "step", f"steps to rel. subopt {TOL:g}", "penalty measured",
                         "predicted lambda_S/||L||", "worst case d/k (1 + omega)",
                         "measured / predicted"], rows)
    measured += (f"\n\nd = {d}, k = {k}, one worker, full gradients. Penalty measured = the run's "
                 f"steps to (f - f*)/(f(x0) - f*) <= {TOL:g} over uncompressed GD's on the same "
                 f"problem (the same spectrum and rotation). Every sketch run uses "
                 f"`stepsize: theory` = 1/lambda_S.")
    R = result["runs"]
    haar = R["power-diag-haar"]
    ok_close = haar["measured"] is not None and abs(haar["measured"] / haar["predicted"] - 1) <= 0.15
    ok_below = haar["measured"] is not None and haar["measured"] * 2 <= haar["worst_case"]
    coord_diag, coord_rot = R["power-diag-coord"], R["power-rot-coord"]
    ok_coherence = (coord_diag["measured"] or 0) > 2 * (coord_rot["measured"] or np.inf)
    result["checks"] = {"haar_within_15pct_of_predicted": ok_close,
                        "haar_below_worst_case_by_2x": ok_below,
                        "coordinates_suffer_only_when_aligned": ok_coherence}
    if ok_close and ok_below and ok_coherence:
        verdict = "reproduced (penalty follows lambda_S/||L||; the paper's own experiments unknown)"
    elif ok_below:
        verdict = "partly (far below d/k, but not within 15 % of lambda_S/||L|| everywhere)"
    else:
        verdict = "not reproduced"
    why = _why(R, variants, d, k)
    _figure(out, R, variants)
    setup = setup_text(cfg, variants, common, 2, "One worker (2 ranks: server and worker), "
                       "synchronous; x0 = 0 and x* the worker's center.")
    return write_report(out, title=f"flynn{' (quick)' if quick else ''}: {PAPER}", claim=CLAIM,
                        setup=setup, measured=measured,
                        figures=[("flynn_penalty.png", "measured penalty against the predicted "
                                  "lambda_S/||L|| (log-log; the diagonal is agreement), and the "
                                  "worst case d/k")],
                        verdict=verdict, why=why, result=result)


def _f(v):
    return "-" if v is None else f"{v:.3g}"


def _why(R, variants, d, k):
    lines = []
    sk = [v.name for v in variants if "predicted" in R[v.name] and R[v.name]["measured"]]
    missing = [v.name for v in variants if "predicted" in R[v.name] and not R[v.name]["measured"]]
    if missing:
        lines.append(f"Not reached within the iteration cap (no measured penalty): "
                     f"{', '.join(missing)}; their predicted penalties are "
                     + ", ".join(f"{R[n]['predicted']:.3g}" for n in missing) + ".")
    if not sk:
        return "\n\n".join(lines)
    ratios = [R[n]["measured"] / R[n]["predicted"] for n in sk]
    worst = max(sk, key=lambda n: abs(R[n]["measured"] / R[n]["predicted"] - 1))
    lines.append(
        f"Over the {len(sk)} sketch runs, measured / predicted is {min(ratios):.3g} to "
        f"{max(ratios):.3g} (furthest: {worst}, {R[worst]['measured']:.3g} against "
        f"{R[worst]['predicted']:.3g}). Why the two agree: with step 1/lambda_S the mean iterate "
        f"E x_t follows GD with step 1/lambda_S exactly (E[S^T S] = I), so iterations scale by "
        f"lambda_S/||L|| for every eigen-direction, and at x* the sketched gradient is 0, so no "
        f"noise floor is left (single worker, full gradients).")
    if any(n.startswith("flat-") for n in sk):
        lines.append(
            "On the flat spectrum the step counts run above the prediction because of the "
            f"tolerance, not the sketch: GD removes an eigen-direction with lambda_i near ||L|| in "
            f"one or two steps, where the sketch's mean contracts by (1 - lambda_i/lambda_S) a "
            f"step; their ratio log(1 - lambda_i/lambda_S) / log(1 - lambda_i/||L||) far exceeds "
            f"lambda_S/||L|| there, and at rel. subopt {TOL:g} (GD: a few dozen steps) those "
            f"directions dominate. Run on to tighter tolerances, the slow directions rule and the "
            f"ratio comes near the prediction, with a spread from run to run that the initial "
            f"point explains: GD's steps depend on how much of x0 - x* lies in the slowest "
            f"eigen-directions (a chance property of the seeded center), the sketch's much less, "
            f"because its noise feeds every direction from all the others (the tr(L) term of its "
            f"moment). Measured at d = 200 with Haar (predicted 10.6), seeds 0-4, each against GD "
            f"on the same problem, at rel. subopt 1e-10: diagonal 12.4 / 15.4 / 10.5 / 11.5 / "
            f"10.8, rotated 9.5 / 7.2 / 20.1 / 11.3 / 11.1 (medians 11.5 and 11.1); the outliers "
            f"are the seeds whose x0 - x* has almost nothing in the two slowest directions (0.00 "
            f"to 0.03 of the mean share: GD done in 630 and 873 steps) or much (1.4 to 1.6 times "
            f"it: 7.2). Haar sketches are rotation invariant in distribution, and the runs show "
            f"no systematic difference between diagonal and rotated; an earlier single-seed gap "
            f"(18.3 against 10.7 at 1e-6) came from this spread and from timing the rotated runs "
            f"against the diagonal problem's GD, which starts from a different x0 - x* in L's "
            f"eigen-coordinates (each sketch run is now timed against GD on its own problem).")
    h = R["power-diag-haar"]
    lines.append(
        f"On the power law (tr L/||L|| = {h['trace_ratio']:.3g}) the Haar penalty is "
        f"{_f(h['measured'])} against the predicted {h['predicted']:.3g} and the worst case "
        f"{h['worst_case']:.3g}: the effective rank, not d, sets it.")
    cd, cr = R["power-diag-coord"], R["power-rot-coord"]
    lines.append(
        f"Random coordinates depend on alignment: on the diagonal power law (max_i L_ii/||L|| = "
        f"{cd['max_diag_ratio']:.3g}) the penalty is {_f(cd['measured'])} (predicted "
        f"{cd['predicted']:.3g}, the worst case), rotated (max_i L_ii/||L|| = "
        f"{cr['max_diag_ratio']:.3g}) {_f(cr['measured'])} (predicted {cr['predicted']:.3g}).")
    return "\n\n".join(lines)


def _figure(out, R, variants):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8), constrained_layout=True)
    marks = {"haar": "o", "gauss": "s", "coord": "^"}
    for v in variants:
        m = R[v.name]
        if not m.get("measured"):
            continue
        short = v.name.split("-")[-1]
        ax.scatter(m["predicted"], m["measured"], marker=marks[short],
                   label=v.label, s=40)
        ax.scatter(m["worst_case"], m["measured"], marker=marks[short], facecolors="none",
                   edgecolors="gray", s=30)
    lo, hi = ax.get_xlim()
    ax.plot([0.8, hi], [0.8, hi], "k--", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("predicted penalty lambda_S/||L|| (filled); worst case d/k (hollow, gray)")
    ax.set_ylabel("measured penalty (steps / GD's steps)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small")
    fig.savefig(out / "flynn_penalty.png", dpi=120)
    plt.close(fig)


REPRODUCTIONS = [
    Reproduction("flynn", PAPER,
                 "Haar, Gaussian, rand-k (coordinate) sketches on power-law / low-rank / flat "
                 "spectra, diagonal and rotated: measured penalty vs lambda_S/||L|| vs d/k",
                 run=run),
]
