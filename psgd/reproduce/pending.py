"""Reproductions registered before psgd can run them: each says what it still needs (issue 13),
so ``psgd reproduce --list`` shows the whole plan and running one exits 2."""

from __future__ import annotations

from . import Reproduction

REPRODUCTIONS = [
    Reproduction(
        "albasyoni", "Albasyoni et al. (optimal gradient compression)",
        "bytes to 1e-4: spherical, sparse ditherings, basic, best top-k; ridge 252x14, "
        "logistic 683x10",
        missing="the reproduction itself is not written yet: what it needs exists (algorithm "
                "cgd runs spherical and sparse dithering in plain single-node compressed GD; "
                "metrics.jsonl has dist2 = ||x - x*||^2 / ||x0 - x*||^2 and payload bits)"),
]
