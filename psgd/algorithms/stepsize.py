"""Step-size rules and compressor requirements shared by several algorithms."""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError


def step_size(cfg_alg, consts, theory, tau: int):
    """(gamma, rule): a numeric ``stepsize`` as given, else the synchronous theory step.

    ``theory`` is a function returning (gamma, rule) from the problem constants; it is
    called only for ``stepsize: theory``, which needs L, L_i and mu (a problem that cannot
    tell them makes it a config error asking for a number). Asynchronous runs divide the
    theory step by (1 + tau): a HEURISTIC, not proven for compressed methods
    (delayed-gradient methods are stable with steps of order 1/(L (1 + tau)); Arjevani,
    Shamir & Srebro 2020 for delayed GD on quadratics).
    """
    if cfg_alg["stepsize"] != "theory":
        return float(cfg_alg["stepsize"]), "given in the config"
    if not consts.known:
        raise ConfigError("algorithm.stepsize: got 'theory', but this problem does not know its "
                          "smoothness and strong convexity constants; allowed: a number "
                          "(e.g. --set algorithm.stepsize=0.1)")
    gamma, rule = theory()
    if tau:
        return gamma * (1.0 / (1.0 + tau)), rule + " / (1+tau) (heuristic)"
    return gamma, rule


def _compressor(cfg):
    from ..compressors import get_compressor
    from ..problems import layers

    return get_compressor(cfg["compressor"], layers(cfg["problem"], cfg["data"]))


def require_unbiased(cfg):
    comp = _compressor(cfg)
    if not comp.unbiased:
        raise ConfigError(f"compressor.name: got {comp.name!r}, which is biased; allowed for "
                          f"{cfg['algorithm']['name']}: an unbiased compressor "
                          f"(use cgd, ef or ef21 with biased ones)")


def require_contraction(cfg):
    """At validation time d is unknown; a compressor that is no contraction at d = 1024
    (rounding: delta = 1 for every d) is refused here with the same message as at run time."""
    contraction(_compressor(cfg), 1024)


def contraction(compressor, d):
    """(delta, scale): ||s C(x) - x||^2 <= delta ||x||^2 after scaling by s.

    A biased compressor gives its own delta; an unbiased one with variance omega is
    turned into a contraction by s = 1/(1+omega), with delta = omega/(1+omega).
    """
    if compressor.unbiased:
        omega = compressor.omega(d)
        return omega / (1.0 + omega), 1.0 / (1.0 + omega)
    delta = compressor.delta(d)
    # powersgd: no uniform contraction, but made for error feedback (its run checks ask
    # for a numeric step, since the theory steps need delta < 1)
    if not delta < 1.0 and not getattr(compressor, "for_error_feedback", False):
        raise ConfigError(f"compressor.name: got {compressor.name!r} with delta = {delta:g}, which "
                          f"is no contraction; allowed for error feedback: a compressor with "
                          f"delta < 1 (e.g. top_k, sign) or an unbiased one")
    return delta, 1.0


def message_scale(compressor, d) -> float:
    """The factor that turns ``compressor`` into a contraction (1 for biased ones)."""
    return contraction(compressor, d)[1]


def ef21_step(compressor, consts, weights):
    """EF21's theorem step (proven, sync) for ``compressor``.

    gamma = 1/(L + L~ sqrt(beta/theta)) with a = 1 - delta, theta = 1 - sqrt(1 - a),
    beta = (1 - a)/theta and L~ = sqrt(sum_i w_i L_i^2).
    """
    delta, _ = contraction(compressor, consts.d)
    a = 1.0 - delta
    theta = 1.0 - math.sqrt(1.0 - a)
    beta = (1.0 - a) / theta
    return 1.0 / (consts.L + l_tilde(consts, weights) * math.sqrt(beta / theta))


def l_tilde(consts, weights) -> float:
    """sqrt(sum_i w_i L_i^2): the mean-square smoothness of the workers' f_i."""
    return math.sqrt(float(np.dot(weights, np.square(consts.L_i))))
