"""Reproductions registered before psgd can run them: each says what it still needs (issue 13,
items 1 and 2), so ``psgd reproduce --list`` shows the whole plan and running one exits 2."""

from __future__ import annotations

from . import Reproduction

REPRODUCTIONS = [
    Reproduction(
        "albasyoni", "Albasyoni et al. (optimal gradient compression)",
        "bytes to 1e-4: spherical, sparse ditherings, basic, best top-k; ridge 252x14, "
        "logistic 683x10",
        missing="needs single-node compressed GD with biased compressors (algorithm cgd, or "
                "dqgd with allow_biased: spherical and deterministic sparse dithering are biased "
                "and only ef/ef21 accept them today) and the dist2 metric ||x - x*||^2 / "
                "||x0 - x*||^2 in metrics.jsonl"),
    Reproduction(
        "flynn", "Flynn et al. (problem-dependent bounds for linear compression)",
        "Haar, Gaussian, rand-k, coordinate sketches on flat / power-law / low-rank spectra: "
        "measured penalty vs lambda_S/||L|| vs d/k",
        missing="needs quadratic spectra lowrank (rank r) and power-law lambda_i = i^-a (today's "
                "'power' is mu + (L - mu) t^3), and stepsize: theory for sketches from lambda_S "
                "of the smoothness matrix"),
]
