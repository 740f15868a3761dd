"""The DIANA paper (Mishchenko, Gorbunov, Takac & Richtarik, arXiv 1901.09269 v1): Fig. 2,
Fig. 5 and Table 3, with the claims as the project's paper notes (papers.md) state them."""

from __future__ import annotations

import math

import numpy as np

from .. import wire
from ..plot import figure
from ..report import first_below
from . import Reproduction
from .common import (Variant, config_path, data_given, md_table, needs_data, plateau,
                     run_variants, sci, setup_text as _setup, write_report)

PAPER = "DIANA (Mishchenko et al. 2019, arXiv 1901.09269 v1)"
DQGD = "algorithm.name=dqgd"


def _epochs_to(run, eps):
    i = first_below(run, "subopt", eps)
    return None if i is None else run.series("epoch")[i]


def _bits_to(run, eps, up_only=False, envelope=True):
    """Bits (up, or up + down) at the first logged record with subopt <= eps, or None.

    ``envelope=False`` leaves out psgd's 32-byte message envelope: a synchronous run sends
    n_workers GRAD messages per step, so that is exact (the compressor's own bytes stay in).
    A run that logs ``payload_bits_up`` (newer psgd) gives that instead.
    """
    i = first_below(run, "subopt", eps)
    if i is None:
        return None
    rec = run.records[i]
    if not envelope and up_only and "payload_bits_up" in rec:
        return rec["payload_bits_up"]
    bits = rec["bits_up"] if up_only else rec["bits_up"] + rec["bits_down"]
    if not envelope:
        bits -= 8 * wire.HEADER_NBYTES * run.summary["n_workers"] * rec["step"]
    return bits


# =============================================================================================
# Fig. 2: DIANA with momentum vs QSGD, TernGrad, DQGD on mushrooms
# =============================================================================================

FIG2_CLAIM = (
    "Fig. 2 **[P]** (papers.md D.3): DIANA with momentum beta = 0.95 against QSGD, TernGrad "
    "and DQGD on logistic regression, mushrooms (n = 8124, d = 112); functional accuracy from 1 "
    "down to 1e-4 over 0-12 epochs: *DIANA keeps decreasing; the others stall*. The reason "
    "**[P]** (B.2, B.3): QSGD / TernGrad / DQGD (DIANA with alpha = 0) converge only to a ball "
    "whose size grows with the quantizer variance omega and the step; DIANA learns the shifts "
    "h_i -> grad f_i(x*), so its compression variance vanishes and it converges linearly to the "
    "exact optimum (acceptance check E.10: DIANA < 1e-12 where DCGD plateaus near 1e-3 **[D]**).")


def _fig2_variants(quick):
    v = [Variant("diana", "DIANA (beta 0.95, alpha 1/(1+omega))"),
         Variant("qsgd", "QSGD (1-bit, 2-norm)", [DQGD]),
         Variant("terngrad", "TernGrad (1-bit, inf-norm)", [DQGD, "compressor.norm=inf"])]
    if not quick:
        v += [Variant("dqgd", "DQGD (stand-in: s = 4, 2-norm)", [DQGD, "compressor.levels=4"]),
              Variant("terngrad-theory", "TernGrad, proven step, no momentum",
                      [DQGD, "compressor.norm=inf", "algorithm.momentum=0",
                       "algorithm.stepsize=theory"])]
    return v


def fig2(out, quick, jobs, extra=()):
    if not data_given(extra):
        needs_data("mushrooms")
    out.mkdir(parents=True, exist_ok=True)
    cfg = config_path("diana-fig2.yaml")
    common = ["run.iterations=2500", "run.log_every=100"] if quick else []
    variants = _fig2_variants(quick)
    runs = run_variants(cfg, variants, out / "runs", jobs, common, extra)
    names = [v.label for v in variants]
    rs = [runs[v.name] for v in variants]
    figure(rs, "epoch", "subopt", out / "fig2_epochs.png", "mushrooms: f - f* per epoch", names)
    figure(rs, "bits", "subopt", out / "fig2_bits.png", "mushrooms: f - f* per bit sent", names)

    rows, result = [], {"runs": {}}
    for v in variants:
        r = runs[v.name]
        m = {"final_subopt": r.series("subopt")[-1], "plateau": plateau(r),
             "epochs": r.series("epoch")[-1], "stepsize": r.summary.get("stepsize"),
             "omega": r.summary.get("omega"), "bits_to_1e-4": _bits_to(r, 1e-4)}
        m.update({f"epochs_to_{e:g}": _epochs_to(r, e) for e in (1e-2, 1e-4, 1e-6)})
        result["runs"][v.name] = m
        rows.append([v.label, f"{m['stepsize']:.3g}", f"{m['omega']:.3g}", sci(m["final_subopt"]),
                     sci(m["plateau"]), *(_int(m[f"epochs_to_{e:g}"]) for e in (1e-2, 1e-4, 1e-6)),
                     sci(m["bits_to_1e-4"])])
    R = result["runs"]
    base = ["qsgd", "terngrad"]
    ok_diana = R["diana"]["final_subopt"] < 1e-6
    ok_floor = all(R[b]["plateau"] > 1e-4 for b in base)
    ratio = R["qsgd"]["plateau"] / R["terngrad"]["plateau"]
    omega_ratio = R["qsgd"]["omega"] / R["terngrad"]["omega"]
    # DIANA's final model is x* to ~1e-8 in f: the quantizers' actual variance there
    x_opt = np.load(runs["diana"].path / "model.npy")
    var = {nm: quantizer_variance_at(runs["diana"], x_opt, nm) for nm in ("2", "inf")}
    var_ratio = var["2"] / var["inf"]
    mid = {b: _middle_third(runs[b]) for b in base}
    result["checks"] = {"diana_below_1e-6": ok_diana, "qsgd_terngrad_plateau_above_1e-4":
                        ok_floor, "plateau_ratio_qsgd_terngrad": ratio,
                        "omega_ratio_qsgd_terngrad": omega_ratio,
                        "variance_at_opt_ratio_qsgd_terngrad": var_ratio}
    n_steps = rs[0].records[-1]["step"]
    measured = md_table(["method", "step", "omega", f"f - f* at {n_steps}", "plateau (median, "
                         "last third)", "epochs to 1e-2", "to 1e-4", "to 1e-6",
                         "bits to 1e-4 (up+down)"], rows)
    measured += ("\n\nEpochs: full local gradients, so one step is one pass over the data "
                 "(epoch = step). Epochs to eps are the first logged record (every "
                 f"{rs[0].log_every} steps) below eps; '-' = not reached.")
    if ok_diana and ok_floor:
        verdict = "reproduced (the ordering and the stall; not the paper's epoch scale)"
    elif R["diana"]["final_subopt"] < min(R[b]["plateau"] for b in base):
        verdict = "partly (DIANA is best, but the thresholds 1e-6 / 1e-4 are not both met)"
    else:
        verdict = "not reproduced"
    why = (
        f"With the same step ({R['diana']['stepsize']:g}) and momentum (0.95) for every method "
        f"(tuned for DIANA over 0.1 / 0.2 / 0.4; at 0.2 DIANA reached 4.5e-6 in 3000 steps, at "
        f"0.4 4.7e-9), DIANA ends at {sci(R['diana']['final_subopt'])} while QSGD and TernGrad "
        f"flatten at {sci(R['qsgd']['plateau'])} and {sci(R['terngrad']['plateau'])} (medians "
        f"of the last third of the run; over the middle third {sci(mid['qsgd'])} and "
        f"{sci(mid['terngrad'])}): a stall, not slow progress. The floor "
        f"is the quantizer variance at the optimum (grad f_i(x*) != 0): QSGD's floor is "
        f"{ratio:.2g}x TernGrad's. The worst-case omegas differ by only {omega_ratio:.2g}x, but "
        f"the variance the two quantizers actually have at x* (sum_i w_i^2 Psi_p(grad f_i(x*)), "
        f"Lemma 1, computed here from DIANA's final model) differs by {var_ratio:.2g}x: the "
        f"floor follows the variance at the optimum, as the ball bound gamma/mu * variance "
        f"says. A 4x smaller step lowers TernGrad's floor (measured: 5.6e-5 at step 0.1 after "
        f"3000 steps, still descending). DIANA's shifts learn grad f_i(x*), so nothing is "
        f"left to stall on.\n\n"
        "What does not match: the paper's x axis. It reaches 1e-4 in about 12 epochs, so its "
        "steps must have been minibatch steps (many per epoch) whose batch size it does not "
        "state; with full gradients (needed to see the exact-optimum claim) one epoch is one "
        "step here. The regularisation is l2 = L/N (Appendix L.2). With l2 = 1/N instead "
        "(Sec. 7.1, kappa ~ 2e4) 3000 steps end conditioning-limited for every method "
        "(DIANA with momentum 3.8e-4 after 2000 steps, the others 1.7e-2 to 2.9e-2).")
    if not quick:
        d = runs["diana"].summary
        from ..algorithms.diana import heavy_ball_step

        theory = heavy_ball_step(d["L"], d["omega"], d["alpha"], 0.95, d["n_workers"])
        why += (f"\n\nThe issue's reversal (DIANA behind TernGrad) came from the step rules, "
                f"not the method: TernGrad with its proven step and no momentum "
                f"(terngrad-theory, step {R['terngrad-theory']['stepsize']:.3g}) is still "
                f"descending at {sci(R['terngrad-theory']['final_subopt'])}: on this "
                f"kappa ~ 8000 problem the proven steps are conditioning-limited; DIANA's "
                f"proven heavy-ball step (Theorem 7, what stepsize: theory gives with "
                f"momentum 0.95) would be {theory:.3g}, "
                f"{R['terngrad-theory']['stepsize'] / theory:.0f}x smaller again.")
    setup = _setup(cfg, variants, common, 5,
                   "DQGD: the paper does not say which quantizer its DQGD used **[U]**; we use "
                   "random dithering with s = 4 levels (2-norm) as a stand-in.")
    return write_report(out, title=f"diana-fig2{' (quick)' if quick else ''}: {PAPER}, Fig. 2",
                        claim=FIG2_CLAIM, setup=setup, measured=measured,
                        figures=[("fig2_epochs.png", "f - f* against epochs (log scale)"),
                                 ("fig2_bits.png", "f - f* against bits sent, up + down")],
                        verdict=verdict, why=why, result=result)


def _middle_third(run) -> float:
    vals = [v for v in run.series("subopt") if v is not None]
    k = len(vals) // 3
    return float(np.median(vals[k:2 * k])) if k else vals[-1]


def quantizer_variance_at(run, x, norm) -> float:
    """E||Q(g) - g||^2 of the averaged 1-level quantized gradient at x: sum_i w_i^2 Psi_p(g_i)
    with Psi_p(g) = ||g||_1 ||g||_p - ||g||_2^2 (DIANA Lemma 1, one block), g_i = grad f_i(x).
    At x = x* this is the noise a method without shifts keeps injecting."""
    from ..problems import make_problem

    cfg = run.config
    ps = make_problem(cfg["problem"], cfg["data"], cfg["seed"], run.summary["n_workers"])
    p = np.inf if norm == "inf" else 2
    total = 0.0
    for i, w in enumerate(ps.weights):
        g = ps.local(i).grad(x)
        total += w * w * (np.abs(g).sum() * np.linalg.norm(g, p) - g @ g)
    return float(total)


# =============================================================================================
# Fig. 5: Rosenbrock over 2 workers
# =============================================================================================

FIG5_CLAIM = (
    "Fig. 5 **[P]** (papers.md D.3, Appendix L.1): the Rosenbrock function f = (x-1)^2 + "
    "10(y-x^2)^2 split over 2 workers as f1 = (x+16)^2 + 10(y-x^2)^2 + 16y and f2 = (x-18)^2 + "
    "10(y-x^2)^2 - 16y + const, full gradients, momentum 0.9, alpha = 0.5, 1-bit quantizers: "
    "*DIANA reaches the optimum (1, 1); QSGD and TernGrad do not* (grad f_i(x*) != 0, so "
    "their quantization noise never vanishes).")


def fig5(out, quick, jobs, extra=()):
    out.mkdir(parents=True, exist_ok=True)
    cfg = config_path("diana-fig5.yaml")
    common = ["run.iterations=3500", "run.log_every=250"] if quick else []
    variants = [Variant("diana", "DIANA (alpha 0.5)", ["algorithm.alpha=0.5"], ranks=3),
                Variant("qsgd", "QSGD / QGD (1-bit, 2-norm)", [DQGD], ranks=3),
                Variant("terngrad", "TernGrad (1-bit, inf-norm)", [DQGD, "compressor.norm=inf"],
                        ranks=3)]
    runs = run_variants(cfg, variants, out / "runs", jobs, common, extra)
    rs = [runs[v.name] for v in variants]
    names = [v.label for v in variants]
    figure(rs, "step", "subopt", out / "fig5_subopt.png", "Rosenbrock, 2 workers", names)
    rows, result = [], {"runs": {}}
    for v in variants:
        r = runs[v.name]
        x = np.load(r.path / "model.npy")
        m = {"final_subopt": r.series("subopt")[-1], "plateau": plateau(r),
             "dist_to_opt": float(np.linalg.norm(x - 1.0)), "x_final": [float(t) for t in x]}
        result["runs"][v.name] = m
        rows.append([v.label, sci(m["final_subopt"]), sci(m["plateau"]),
                     f"({x[0]:.4f}, {x[1]:.4f})", sci(m["dist_to_opt"])])
    R = result["runs"]
    ok_diana = R["diana"]["final_subopt"] < 1e-6 and R["diana"]["dist_to_opt"] < 1e-2
    ok_others = all(R[b]["plateau"] > 1e-3 for b in ("qsgd", "terngrad"))
    result["checks"] = {"diana_at_optimum": ok_diana, "others_plateau_above_1e-3": ok_others}
    steps = rs[0].records[-1]["step"]
    measured = md_table(["method", f"f - f* at {steps}", "plateau (median, last third)",
                         "final x", "distance to x*"], rows)
    verdict = ("reproduced" if ok_diana and ok_others else
               "partly" if ok_diana or ok_others else "not reproduced")
    why = (f"DIANA converges linearly to x* = (1, 1) (distance "
           f"{sci(R['diana']['dist_to_opt'])}), QSGD and TernGrad with the same step and momentum "
           f"wander around it at f - f* ~ {sci(R['qsgd']['plateau'])} / "
           f"{sci(R['terngrad']['plateau'])}: at x* the workers' gradients are (+-34, +-16) "
           f"(grad f1(x*) = (34, 16) = -grad f2(x*)), so a 1-bit quantizer of grad f_i keeps "
           f"injecting noise of that size, while DIANA quantizes grad f_i - h_i -> 0. The paper "
           f"draws the trajectories in the plane; psgd logs f, not the iterates, so the figure "
           f"here is f - f* per step and the final point comes from model.npy. The step 5e-4 is "
           f"ours (the paper tuned it and does not print it).")
    setup = _setup(cfg, variants, common, 3, "")
    return write_report(out, title=f"diana-fig5{' (quick)' if quick else ''}: {PAPER}, Fig. 5",
                        claim=FIG5_CLAIM, setup=setup, measured=measured,
                        figures=[("fig5_subopt.png", "f - f* against steps (log scale)")],
                        verdict=verdict, why=why, result=result)


# =============================================================================================
# Table 3: block sizes, l2 vs inf norm
# =============================================================================================

TABLE3_CLAIM = (
    "Table 3 / Fig. 6 **[P]** (papers.md D.3, Appendix L.2.2): DIANA with alpha = 1e-3, no "
    "momentum, on mushrooms (d = 112) and a5a (d = 122), 10 and 20 workers, block sizes "
    "{6, 25, full}, functional accuracy against time: *the optimal block size is about 25 for "
    "the 2-norm quantizer and the full vector for the inf-norm one*, for both datasets and both "
    "worker counts (for the 2-norm, \"if the regularization is big\"; small blocks when it is "
    "small). Theory **[P]** (Lemma 2, B.3): omega_2 = sqrt(d~) - 1 and omega_inf = "
    "(sqrt(d~) - 1)/2 for blocks of d~, so blocks lower the variance but add one float "
    "per block to every message.")

BLOCKS = (("6", 6), ("25", 25), ("full", None))
T3_EPS = (1e-3, 1e-4, 1e-5, 1e-6, 1e-8)


def table3(out, quick, jobs, extra=()):
    datasets = ("mushrooms",) if quick else ("mushrooms", "a9a")
    if data_given(extra):
        datasets = ("synthetic",)
    else:
        needs_data(*datasets)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config_path("diana-table3.yaml")
    workers = (4,) if quick else (10, 20)
    common = ["run.iterations=800"] if quick else []
    variants = []
    for ds in datasets:
        for n in workers:
            for norm in ("2", "inf"):
                for bname, b in BLOCKS:
                    variants.append(Variant(
                        f"{ds}-n{n}-{'l2' if norm == '2' else 'linf'}-b{bname}",
                        f"{ds}, {n} workers, {norm}-norm, block {bname}",
                        [f"data.path={ds}", f"compressor.norm={norm}",
                         f"compressor.block_size={'null' if b is None else b}"], ranks=n + 1))
    runs = run_variants(cfg, variants, out / "runs", jobs, common, extra)
    result = {"runs": {}, "best": {}}
    rows, figs = [], []
    for ds in datasets:
        for n in workers:
            for norm in ("2", "inf"):
                group = [v for v in variants if v.name.startswith(
                    f"{ds}-n{n}-{'l2' if norm == '2' else 'linf'}-")]
                grs = [runs[v.name] for v in group]
                tag = f"{ds}-n{n}-{'l2' if norm == '2' else 'linf'}"
                figure(grs, "bits_up", "subopt", out / f"table3_{tag}.png",
                       f"{ds}, {n} workers, {norm}-norm quantizer",
                       [f"block {b}" for b, _ in BLOCKS])
                figs.append((f"table3_{tag}.png", f"{ds}, {n} workers, {norm}-norm: f - f* "
                             f"against bits up (headers included)"))
                eps = _common_eps(grs)
                best = {}
                for crit, kw in (("bits", {}), ("payload", {"envelope": False}),
                                 ("steps", None)):
                    vals = {}
                    for (bname, _), r in zip(BLOCKS, grs):
                        i = first_below(r, "subopt", eps) if eps else None
                        if i is None:
                            vals[bname] = math.inf
                        elif kw is None:
                            vals[bname] = r.records[i]["step"]
                        else:
                            vals[bname] = _bits_to(r, eps, up_only=True, **kw)
                    best[crit] = min(vals, key=vals.get) if eps else None
                result["best"][tag] = {"eps": eps, **best}
                for (bname, _), r in zip(BLOCKS, grs):
                    name = f"{tag}-b{bname}"
                    steps = r.records[-1]["step"] or 1
                    per_msg = r.records[-1]["bits_up"] / (steps * n)
                    m = {"eps": eps, "omega": r.summary.get("omega"), "bits_per_message":
                         per_msg, "payload_bits_per_message": per_msg - 8 * wire.HEADER_NBYTES,
                         "final_subopt": r.series("subopt")[-1]}
                    if eps:
                        i = first_below(r, "subopt", eps)
                        m.update(steps_to_eps=r.records[i]["step"],
                                 bits_up_to_eps=_bits_to(r, eps, True),
                                 payload_up_to_eps=_bits_to(r, eps, True, envelope=False))
                    result["runs"][name] = m
                    mark = lambda c: " **best**" if best[c] == bname else ""  # noqa: E731
                    rows.append([ds, n, norm, bname, f"{m['omega']:.3g}", f"{per_msg:.0f}",
                                 f"{m['payload_bits_per_message']:.0f}", sci(eps),
                                 f"{m.get('steps_to_eps', '-')}{mark('steps')}",
                                 f"{sci(m.get('bits_up_to_eps'))}{mark('bits')}",
                                 f"{sci(m.get('payload_up_to_eps'))}{mark('payload')}"])
    B = result["best"]
    # The paper's bit accounting (Theorem 1) counts the quantizer's message, not a transport
    # envelope, so the verdict uses payload bits; the envelope-inclusive winner is reported too.
    linf = [t for t in B if t.endswith("linf")]
    l2 = [t for t in B if t.endswith("l2")]
    linf_full = [t for t in linf if B[t]["payload"] == "full"]
    l2_25 = [t for t in l2 if B[t]["payload"] == "25"]
    result["checks"] = {"linf_best_full": len(linf_full) == len(linf),
                        "l2_best_25": len(l2_25) == len(l2),
                        "linf_best_full_with_envelope": all(B[t]["bits"] == "full" for t in linf),
                        "l2_best_25_with_envelope": all(B[t]["bits"] == "25" for t in l2)}
    measured = md_table(["dataset", "workers", "norm", "block", "omega", "bits/msg",
                         "payload bits/msg", "eps", "steps to eps", "bits up to eps",
                         "payload bits up to eps"], rows)
    measured += ("\n\nbits/msg: measured, including psgd's 32-byte message envelope; payload: "
                 "without the envelope (the compressor's bytes: its 8-byte codec header, one "
                 "float32 scale per block, 5 trits per byte). eps: the smallest of 1e-3, 1e-4, 1e-5, 1e-6, "
                 "1e-8 every block size of the group reached; steps to eps are resolved at the "
                 "logging cadence (25 steps); 'best' = least of that column. Time, the paper's "
                 "axis, is not used: 5-21 ranks on 2 shared cores make wall time measure the "
                 "scheduler.")
    if len(linf_full) == len(linf) and len(l2_25) == len(l2):
        verdict = "reproduced (by payload bits)"
    elif len(linf_full) + len(l2_25) > 0:
        verdict = (f"partly: inf-norm full best in {len(linf_full)}/{len(linf)} groups, 2-norm "
                   f"25 best in {len(l2_25)}/{len(l2)} (by payload bits)")
    else:
        verdict = "not reproduced"
    why = _table3_why(result, workers, datasets)
    setup = _setup(cfg, variants[:len(BLOCKS) * 2], common, workers[0] + 1,
                   f"Shown for the first dataset and worker count; the others swap data.path "
                   f"and the number of ranks ({', '.join(str(w + 1) for w in workers)}). Every "
                   f"variant uses the same step 0.19 (= 0.5/L on mushrooms; within DQGD's proven "
                   f"bound for every block size at n >= 4), alpha = 1e-3 and l2 = 0.05 (the "
                   f"\"big regularization\" case of L.2.2). a9a replaces the paper's a5a (same "
                   f"123 features, 32561 samples instead of 6414).")
    return write_report(out, title=f"diana-table3{' (quick)' if quick else ''}: {PAPER}, "
                                   f"Table 3", claim=TABLE3_CLAIM, setup=setup,
                        measured=measured, figures=figs, verdict=verdict, why=why,
                        result=result)


def _common_eps(runs):
    for eps in reversed(T3_EPS):
        if all(first_below(r, "subopt", eps) is not None for r in runs):
            return eps
    return None


def _table3_why(result, workers, datasets) -> str:
    R, B = result["runs"], result["best"]
    lines = []
    for t, b in B.items():
        lines.append(f"- {t}: best by payload bits **{b['payload']}**, by bits with the envelope "
                     f"**{b['bits']}**, by steps **{b['steps']}** (eps {sci(b['eps'])})")
    text = "\n".join(lines)
    ds, n = datasets[0], workers[0]
    for norm in ("l2", "linf"):
        b6, b25, bf = (R.get(f"{ds}-n{n}-{norm}-b{b}", {}) for b in ("6", "25", "full"))
        if not (b6 and b25 and bf and "steps_to_eps" in b6 and "steps_to_eps" in bf
                and "steps_to_eps" in b25):
            continue
        text += (
            f"\n\n{ds}, {n} workers, {norm}: smaller blocks lower omega ({bf['omega']:.3g} "
            f"full, {b25['omega']:.3g} at 25, {b6['omega']:.3g} at 6) and the steps to eps "
            f"({bf['steps_to_eps']} / {b25['steps_to_eps']} / {b6['steps_to_eps']}), but every "
            f"block adds a 32-bit scale: {bf['payload_bits_per_message']:.0f} / "
            f"{b25['payload_bits_per_message']:.0f} / {b6['payload_bits_per_message']:.0f} "
            f"payload bits per message. Steps x payload decides the payload winner: from "
            f"the full vector to blocks of 6 the steps fall "
            f"{bf['steps_to_eps'] / b6['steps_to_eps']:.2g}x while the payload grows "
            f"{b6['payload_bits_per_message'] / bf['payload_bits_per_message']:.2g}x. psgd's "
            f"{8 * wire.HEADER_NBYTES}-bit envelope is a fixed cost per message, so counting "
            f"it rewards the variant with fewer steps, i.e. smaller blocks: that is why the "
            f"two criteria can pick different winners.")
    text += ("\n\nAll variants share one step (0.19); the paper tuned its runs and measured "
             "time, so a block size that wins here by a margin of one logging interval (25 "
             "steps) is a tie within the resolution.")
    return text


def _int(v):
    return "-" if v is None else f"{v:.0f}"


REPRODUCTIONS = [
    Reproduction("diana-fig2", PAPER, "DIANA with momentum vs QSGD, TernGrad, DQGD on mushrooms",
                 run=fig2),
    Reproduction("diana-table3", PAPER, "block sizes 6/25/full, l2 vs inf norm, 10/20 workers",
                 run=table3),
    Reproduction("diana-fig5", PAPER, "Rosenbrock over 2 workers: DIANA vs QSGD, TernGrad",
                 run=fig5),
]
