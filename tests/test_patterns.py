"""Access patterns: the zipf sampler draws from the exact distribution."""

import numpy as np
import pytest

from ptshare.scenario.patterns import accesses, page_indices


@pytest.mark.parametrize(("pages", "s"), [(10, 1.1), (50, 0.7), (7, 2.0), (100, 1.0)])
def test_zipf_matches_the_distribution(pages, s):
    draws = page_indices("zipf", pages, 200_000, seed=3, zipf_s=s)
    assert draws.min() >= 0 and draws.max() < pages
    want = np.arange(1, pages + 1, dtype=float) ** -s
    want /= want.sum()
    got = np.bincount(draws, minlength=pages) / len(draws)
    # chi-square against the exact probabilities: far below the 0.1% critical value for these sizes
    chi2 = len(draws) * ((got - want) ** 2 / want).sum()
    assert chi2 < 2 * pages + 30


def test_patterns_are_reproducible_and_in_range():
    a = accesses(0x10000000, 1 << 20, "random", count=1000, seed=5)
    b = accesses(0x10000000, 1 << 20, "random", count=1000, seed=5)
    assert np.array_equal(a.addrs, b.addrs)
    assert a.addrs.min() >= 0x10000000 and a.addrs.max() < 0x10000000 + (1 << 20)
    assert (a.addrs % 4096 == 0).all()
    z = accesses(0, 1 << 30, "zipf", count=10, seed=1, zipf_s=1.1)
    assert len(z) == 10
