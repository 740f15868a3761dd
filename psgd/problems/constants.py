"""Smoothness and strong convexity of a built problem: :func:`constants`."""

from __future__ import annotations

from .problemset import ProblemSet


def constants(ps: ProblemSet) -> dict:
    """``{"L": L of f, "L_i": [L of f_i], "mu": strong convexity of f}`` (cached on ``ps``).

    logistic: L = lambda_max(A^T A)/(4m) + l2, mu = l2; least_squares: L = lambda_max(A^T A)/m +
    l2, mu = lambda_min(A^T A)/m + l2 (l2 when m < d); the L_i use each shard's own rows and m_i.
    quadratic: L and mu of the spectrum. rosenbrock (non-convex): the extreme Hessian eigenvalues
    at the optimum, ~101.61 and ~0.3937. A problem that does not know a constant reports None
    for it (``L_i`` is None unless every worker's is known). A problem that knows the matrix
    behind L (quadratic: the Hessian) adds ``"smoothness_matrix"``, a function returning it
    dense (the sketch step rule lambda_S needs it; papers.md B.5).
    """
    if ps._constants is None:
        if ps.family is not None:
            found = ps.family.constants(ps)
        else:  # a ProblemSet built by hand: ask its objectives
            from .builders import Problem
            found = Problem.constants(ps)
        L, L_i, mu = found["L"], found["L_i"], found["mu"]
        ps._constants = {"L": None if L is None else float(L),
                         "L_i": None if L_i is None else [float(v) for v in L_i],
                         "mu": None if mu is None else float(mu),
                         "smoothness_matrix": found.get("smoothness_matrix")}
    c = ps._constants
    return {"L": c["L"], "L_i": None if c["L_i"] is None else list(c["L_i"]), "mu": c["mu"],
            **({"smoothness_matrix": c["smoothness_matrix"]} if c["smoothness_matrix"] else {})}
