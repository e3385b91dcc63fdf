"""Access patterns of a ``touch``: sequential, uniform random, and zipf.

Random and zipf touches draw ``count`` page numbers in [0, pages) from a generator seeded with
``seed``, so a scenario gives the same accesses on every policy and on the host.  Zipf ranks map
to pages in order: page 0 is the most popular, as in a buffer pool whose hot pages were loaded
first.

Zipf samples are drawn exactly (for any exponent s > 0 and any number of pages) by
rejection-inversion (W. Hörmann and G. Derflinger, "Rejection-inversion to generate variates from
monotone discrete distributions", ACM TOMACS 6(3), 1996): a constant number of arithmetic
operations per sample, vectorised, instead of a search in a table of all pages.
"""

from __future__ import annotations

import numpy as np

from ..arch import PAGE_SHIFT, PAGE_SIZE
from ..mm.access import Accesses


class _Zipf:
    """P(k) proportional to k**-s for k in 1..n, by rejection-inversion with H(x), the integral of
    h(x) = x**-s, and its inverse."""

    def __init__(self, n: int, s: float) -> None:
        self.n, self.s = n, s
        self.log = abs(1.0 - s) < 1e-9  # s == 1: H(x) = log x
        self.h_x1 = self._H(1.5) - 1.0
        self.h_n = self._H(n + 0.5)
        self.cut = 2.0 - self._H_inverse(self._H(2.5) - 2.0 ** -s)

    def _H(self, x):  # the paper's names
        if self.log:
            return np.log(x)
        return (np.power(x, 1.0 - self.s) - 1.0) / (1.0 - self.s)

    def _H_inverse(self, y):
        if self.log:
            return np.exp(y)
        return np.power(np.maximum(1.0 + y * (1.0 - self.s), 0.0), 1.0 / (1.0 - self.s))

    def sample(self, rng: np.random.Generator, count: int) -> np.ndarray:
        out = np.empty(count, dtype=np.int64)
        todo = None  # all of them, the first time round
        while True:
            n = count if todo is None else len(todo)
            u = rng.random(n)
            u *= self.h_x1 - self.h_n
            u += self.h_n
            x = self._H_inverse(u)
            k = x + 0.5  # in place from here: k = clip(floor(x + 0.5), 1, n)
            np.floor(k, out=k)
            np.clip(k, 1, self.n, out=k)
            x -= k  # x - k >= -cut accepts at once: the common case
            slow = np.flatnonzero(x < -self.cut)
            ok = np.ones(n, dtype=bool)
            if len(slow):
                ks = k[slow]
                ok[slow] = u[slow] >= self._H(ks + 0.5) - np.power(ks, -self.s)
            if todo is None:
                if ok.all():
                    out[:] = k
                    return out
                out[ok] = k[ok]
                todo = np.flatnonzero(~ok)
            else:
                out[todo[ok]] = k[ok]
                todo = todo[~ok]
            if not len(todo):
                return out


def page_indices(pattern: str, pages: int, count: int, seed: int, zipf_s: float) -> np.ndarray:
    """Page numbers in [0, pages) accessed by a random or zipf pattern, in order."""
    rng = np.random.default_rng(seed)
    if pattern == "random":
        return rng.integers(0, pages, size=count, dtype=np.int64)
    if pattern == "zipf":
        return _Zipf(pages, zipf_s).sample(rng, count) - 1
    raise ValueError(pattern)


def accesses(start: int, length: int, pattern: str, *, stride: int = PAGE_SIZE, count: int | None = None,
             seed: int = 0, zipf_s: float = 1.0) -> Accesses:
    """The accesses of one touch of [start, start + length)."""
    if pattern == "sequential":
        return Accesses.progression(start, start + length, stride)
    pages = length >> PAGE_SHIFT
    n = pages if count is None else count
    return Accesses.explicit(start + (page_indices(pattern, pages, n, seed, zipf_s) << PAGE_SHIFT))
