"""The VMA list's O(log n) lookups and the cached top-down search for a free range, each checked
against a plain scan over random sequences of mmap, munmap, mprotect and mremap."""

import itertools
import random

import pytest

from ptshare import System
from ptshare.mm.mmap import get_unmapped_area

KiB = 1 << 10
MiB = 1 << 20


def _uncached(s: System, mm, length: int, shared: bool) -> int:
    """Where get_unmapped_area() would put ``length`` bytes with nothing learnt from before."""
    saved = mm.free_area_cache
    mm.free_area_cache = None
    try:
        return get_unmapped_area(s.k, mm, 0, length, 0, None, shared)
    finally:
        mm.free_area_cache = saved


def _check_lookups(mm, rng: random.Random) -> None:
    vmas = mm.vmas
    assert all(a.vm_end <= b.vm_start for a, b in itertools.pairwise(vmas))
    for i, vma in enumerate(vmas):
        assert mm.index_of(vma) == i
    lo, hi = vmas[0].vm_start - 64 * KiB, vmas[-1].vm_end + 64 * KiB
    for _ in range(20):
        start = rng.randrange(lo, hi) & ~0xFFF
        end = start + rng.choice((4 * KiB, 64 * KiB, MiB, 64 * MiB))
        assert mm.vmas_between(start, end) == [v for v in vmas if v.vm_start < end and v.vm_end > start]
        below = [v for v in vmas if v.vm_end <= start]
        above = [v for v in vmas if v.vm_start >= end]
        assert mm.prev_next(start, end) == (below[-1] if below else None, above[0] if above else None)


@pytest.mark.parametrize("seed", range(6))
def test_cached_free_range_search_places_as_a_full_search(seed):
    rng = random.Random(seed)
    s = System("linux", aslr_bits=0)
    s.spawn("p")
    mm = s.task("p").mm
    live: list[tuple[int, int]] = []
    for _ in range(400):
        op = rng.random()
        if op < 0.55 or not live:
            length = rng.choice((4 * KiB, 8 * KiB, 64 * KiB, 2 * MiB, 4 * MiB, 3 * MiB + 4 * KiB))
            shared = rng.random() < 0.5
            expected = _uncached(s, s.task("p").mm, length, shared)
            addr = s.mmap("p", length, shared=shared)  # private, 2 MiB multiples: searched for padded
            assert addr == expected
            live.append((addr, length))
        elif op < 0.8:
            addr, length = live.pop(rng.randrange(len(live)))
            cut = rng.choice((0, 4 * KiB)) if length > 4 * KiB else 0
            s.munmap("p", addr + cut, length - cut)
            if cut:
                live.append((addr, cut))
        elif op < 0.95:
            addr, length = rng.choice(live)
            s.mprotect("p", addr, min(length, 4 * KiB), rng.choice(("r", "rw")))
        else:
            i = rng.randrange(len(live))
            addr, length = live[i]
            vma = s.task("p").mm.vma_lookup(addr)
            if vma.vm_start == addr and vma.vm_end == addr + length:  # mremap takes one whole VMA
                new = s.mremap("p", addr, length, length + 4 * KiB)
                live[i] = (new, length + 4 * KiB)
        mm = s.task("p").mm
        if mm.vmas:
            _check_lookups(mm, rng)


def test_the_cache_spares_the_search_of_gaps_above_the_last_mapping():
    s = System("linux", aslr_bits=0)
    s.spawn("p")
    addrs = [s.mmap("p", 8 * KiB, shared=True) for _ in range(50)]
    assert addrs == [addrs[0] - i * 8 * KiB for i in range(50)]
    cache = s.task("p").mm.free_area_cache
    assert cache is not None and cache.below == addrs[-1] and cache.max_hole == 0
    s.munmap("p", addrs[10], 8 * KiB)  # a hole above: the next 8 KiB go there
    assert s.task("p").mm.free_area_cache is None
    assert s.mmap("p", 8 * KiB, shared=True) == addrs[10]
