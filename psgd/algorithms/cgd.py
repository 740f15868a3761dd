"""CGD: compressed gradient descent / compressed IAG with any compressor, biased ones included.

Workers send C(grad f_i); the server steps with the weighted sum of the decoded messages
(synchronous), of every worker's latest message (``table``: compressed IAG) or of the batch's
(``direct``). It is dqgd without the unbiasedness requirement: the subject of Khirirat,
Feyzmahdavian & Johansson (compressed gradients with staleness: the deterministic
epsilon-compressor ``rounding``, sign, top-k) and the single-node CGD of Albasyoni et al.

``stepsize: theory`` picks the rule that matches what the compressor guarantees
(papers.md B.2, B.4, B.5):

- an epsilon-compressor (``compressor.epsilon(d)``: ||C(v) - v|| <= eps for every v; rounding):
  Khirirat's Theorem A (sync and ``direct``) or B (``table``), labelled [D] in the notes:
  gamma = min{mu/(2 tau L^2), 2/(mu+L)} (A) or min{mu/(6 tau L_max^2), 2/(mu+L)} (B), and
  ||x_k - x*|| <= rho^k ||x_0 - x*|| + R with the ball radius R = eps/mu (tau = 0),
  2 eps (1 + gamma tau L)/mu <= 3 eps/mu (A) or 7 eps/(3 mu) (B). A weighted mean of
  messages with error <= eps has error <= eps, so eps is the compressor's own;
- a linear sketch on a problem that knows its smoothness matrix (quadratics): gamma =
  1/lambda_S, lambda_S = lambda_max(E[S^T S L S^T S]) (Flynn et al.; B.5 [D]), proven for
  one worker without delay;
- a relative-error (delta) compressor (sign, top_k, spherical, deterministic sparse
  dithering: ||C(v) - v||^2 <= delta ||v||^2): gamma = 1/L, proven for one worker without
  delay (descent lemma: f decreases by (1 - delta)/(2L) ||grad f||^2 a step; the 1/(1 - delta)
  iteration factor of B.2). Its error is relative, not absolute, so Theorems A/B give no ball
  for it; with several workers the messages' errors do not vanish at x* (grad f_i(x*) != 0);
- an unbiased compressor: DIANA's Theorem 10 step as dqgd does.

Under delay, the rules without a theorem (sketch, delta, unbiased) use Theorem A/B's step
(for unbiased ones times 1/(1 + omega/n), papers.md B.4), labelled heuristic.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..registry import register
from .base import COMMON_PARAMS, Algorithm, Hyper
from .stepsize import step_size


@register("algorithm")
class CGD(Algorithm):
    """Compressed GD / IAG with any compressor (biased too); Khirirat's Theorem A/B steps."""

    name = "cgd"
    params = dict(COMMON_PARAMS)

    @classmethod
    def resolve(cls, cfg, compressor, consts, weights, tau):
        a = cfg["algorithm"]
        form = cls.default_form(a)
        radius = []  # filled by the epsilon rule: the proven ball radius

        def theory():
            gamma, rule, R = theory_step(compressor, consts, weights, tau, form)
            radius.append(R)
            return gamma, rule

        # delay is handled by the rules themselves (Theorems A/B), not step_size's 1/(1+tau)
        gamma, rule = step_size(a, consts, theory, 0)
        return Hyper(gamma=gamma, form=form, rule=rule,
                     ball_radius=radius[0] if radius else None)


def delay_step(consts, tau: int, table: bool) -> float:
    """Khirirat's step under delay: min{mu/(c tau L^2), 2/(mu+L)}, c = 2 (A) or 6 (B).

    Theorem B (table) takes L = max_i L_i (each worker's entry is delayed separately)."""
    L = max(consts.L_i) if table else consts.L
    cap = 2.0 / (consts.mu + consts.L)
    if tau == 0:
        return cap
    return min(consts.mu / ((6.0 if table else 2.0) * tau * L * L), cap)


def theory_step(compressor, consts, weights, tau: int, form: str):
    """(gamma, rule, ball radius or None) for ``stepsize: theory``; see the module docstring.

    tau = 0 runs synchronously (psgd.algorithms.build), where both forms are plain CGD."""
    n = len(weights)
    table = tau > 0 and form == "table"
    theorem = "B" if table else "A"
    eps = getattr(compressor, "epsilon", None)
    if eps is not None:
        eps = eps(consts.d)
        gamma = delay_step(consts, tau, table)
        mu = consts.mu
        if mu <= 0:
            raise ConfigError("algorithm.stepsize: got 'theory', but Khirirat's Theorems A/B need "
                              "mu > 0 (a strongly convex problem); allowed: a number")
        if tau == 0:
            R, ball = eps / mu, "eps/mu"
        elif table:
            R, ball = 7.0 * eps / (3.0 * mu), "7 eps/(3 mu)"
        else:
            R, ball = 2.0 * eps * (1.0 + gamma * tau * consts.L) / mu, "2 eps (1 + gamma tau L)/mu"
        cover = ("proven [D], compressed IAG" if table else
                 "proven [D]" if tau == 0 or n == 1 else
                 "proven [D] for full-batch delayed steps; psgd's direct form applies partial "
                 "batches, which Theorem A does not cover")
        rule = (f"Khirirat Thm {theorem}: min{{mu/({6 if table else 2} tau L^2), 2/(mu+L)}}, "
                f"tau={tau}, ball ||x - x*|| <= {ball} = {R:.4g} (eps={eps:.4g}; {cover})")
        return gamma, rule, R
    lam_s = sketch_norm(compressor, consts)
    if lam_s is not None and tau == 0:
        proven = "proven [D], one worker" if n == 1 else "heuristic for n > 1 (proven for one worker)"
        return 1.0 / lam_s, (f"1/lambda_S, lambda_S = lambda_max(E[S^T S L S^T S]) = {lam_s:.6g} "
                             f"(Flynn et al., papers.md B.5; {proven})"), None
    if compressor.unbiased:
        omega = compressor.omega(consts.d)
        if tau == 0:
            L_i = np.asarray(consts.L_i, dtype=np.float64)
            g = float(np.min(2.0 / ((consts.mu + L_i) * (1.0 + 2.0 * omega * np.asarray(weights)))))
            return g, "min_i 2/((mu+L_i)(1+2 omega w_i)) (DIANA Thm 10; proven, sync)", None
        return (delay_step(consts, tau, table) / (1.0 + omega / n),
                f"Khirirat Thm {theorem} step / (1 + omega/n), tau={tau} (heuristic: unbiased "
                f"compressor under delay, papers.md B.4)", None)
    delta = compressor.delta(consts.d)
    if not delta < 1.0:
        raise ConfigError(f"compressor.name: got {compressor.name!r} with delta = {delta:g} and no "
                          f"epsilon; allowed for cgd with stepsize theory: an epsilon-compressor "
                          f"(rounding), a contraction (delta < 1) or an unbiased compressor")
    if tau == 0:
        proven = "proven, one worker" if n == 1 else "proven for one worker; n > 1 not covered"
        return 1.0 / consts.L, (f"1/L for a delta = {delta:.3g} contraction: rate "
                                f"1 - (1 - delta) mu/L (papers.md B.2; {proven})"), None
    return (delay_step(consts, tau, table),
            f"Khirirat Thm {theorem} step, tau={tau} (heuristic: delta = {delta:.3g} is a relative "
            f"error, Theorems A/B need an absolute eps)", None)


def sketch_norm(compressor, consts):
    """lambda_S of the problem's smoothness matrix for a sketch compressor, or None."""
    norm = getattr(compressor, "smoothness_norm", None)
    if norm is None or consts.smoothness_matrix is None:
        return None
    return norm(consts.smoothness_matrix())
