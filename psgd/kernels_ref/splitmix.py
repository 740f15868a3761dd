"""The one counter-based SplitMix64 stream every kernel draws from (C: ``psgd_splitmix`` in
``cython_ext/_common.h``).

Output ``i`` (0-based counter; a coordinate, a draw or a block index) of a 64-bit ``seed``::

    z = seed + (i + 1) * 0x9E3779B97F4A7C15            (mod 2**64)
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9          (mod 2**64)
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB          (mod 2**64)
    z = z ^ (z >> 31)

and its uniform double ``u_i = (z >> 11) * 2**-53`` in [0, 1). Counter based, so a whole
vector of outputs is one vectorized expression and any output can be computed without
replaying the ones before it (the spherical decoder needs candidate T directly). ``seed``
is one draw ``rng.integers(0, 2**64, dtype=np.uint64)`` from the Generator given to
``encode``, or the shared key of shared-seed compressors.
"""

from __future__ import annotations

import numpy as np

GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64_at(seed, index) -> np.ndarray:
    """Outputs for the counters ``index`` (broadcast with ``seed``), uint64."""
    with np.errstate(over="ignore"):
        z = np.asarray(seed, dtype=np.uint64) + \
            (np.asarray(index, dtype=np.uint64) + np.uint64(1)) * GAMMA
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def splitmix64(seed: int, start: int, stop: int) -> np.ndarray:
    """Outputs for the counters i in [start, stop), uint64."""
    return splitmix64_at(seed, np.arange(start, stop, dtype=np.uint64))


def to_unit(z: np.ndarray) -> np.ndarray:
    """The top 53 bits of each output as a double in [0, 1)."""
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def uniform_at(seed, index) -> np.ndarray:
    """u_i for the counters ``index`` (broadcast with ``seed``)."""
    return to_unit(splitmix64_at(seed, index))


def splitmix_uniform(seed: int, start: int, stop: int) -> np.ndarray:
    """u_i for i in [start, stop)."""
    return to_unit(splitmix64(seed, start, stop))
