"""Access patterns of a ``touch``: sequential, uniform random, and zipf.

Random and zipf touches draw ``count`` page numbers in [0, pages) from a generator seeded with
``seed``, so a scenario gives the same accesses on every policy and on the host.  Zipf ranks map
to pages in order: page 0 is the most popular, as in a buffer pool whose hot pages were loaded
first.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..arch import PAGE_SHIFT, PAGE_SIZE
from ..mm.access import Accesses


@lru_cache(maxsize=8)
def _zipf_cdf(pages: int, s: float) -> np.ndarray:
    weights = np.arange(1, pages + 1, dtype=np.float64) ** -s
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    return cdf


def page_indices(pattern: str, pages: int, count: int, seed: int, zipf_s: float) -> np.ndarray:
    """Page numbers in [0, pages) accessed by a random or zipf pattern, in order."""
    rng = np.random.default_rng(seed)
    if pattern == "random":
        return rng.integers(0, pages, size=count, dtype=np.int64)
    if pattern == "zipf":
        cdf = _zipf_cdf(pages, zipf_s)
        return np.minimum(np.searchsorted(cdf, rng.random(count), side="right"), pages - 1).astype(np.int64)
    raise ValueError(pattern)


def accesses(start: int, length: int, pattern: str, *, stride: int = PAGE_SIZE, count: int | None = None,
             seed: int = 0, zipf_s: float = 1.0) -> Accesses:
    """The accesses of one touch of [start, start + length)."""
    if pattern == "sequential":
        return Accesses.progression(start, start + length, stride)
    pages = length >> PAGE_SHIFT
    n = pages if count is None else count
    return Accesses.explicit(start + (page_indices(pattern, pages, n, seed, zipf_s) << PAGE_SHIFT))
