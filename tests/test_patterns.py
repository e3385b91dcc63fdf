"""Access patterns: the zipf sampler draws from the exact distribution."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptshare.mm.access import Accesses
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


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 1 << 40), min_size=0, max_size=300), st.integers(0, 3))
def test_first_touches_keeps_the_first_access_to_each_page_in_order(pages, spread):
    # spread: dense page numbers (a direct table) or far apart (the sorting branch)
    addrs = np.array([p % (64 << (10 * spread)) for p in pages], dtype=np.int64) << 12
    got = Accesses.explicit(addrs).first_touches().materialize()
    seen, want = set(), []
    for a in addrs.tolist():
        if a not in seen:
            seen.add(a)
            want.append(a)
    assert got.tolist() == want
