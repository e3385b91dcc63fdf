"""The frame table: models the ``struct page`` array (``mem_map``) and the page allocator.

Per-frame state lives in numpy arrays indexed by frame number (pfn); only the helpers here change
them, and growing them is one function (:meth:`FrameTable._grow`).

What is stored per frame:

``flags``      ``PG_anon`` (anonymous page), ``PG_cache`` (in a page cache), ``PG_huge`` (a 2 MiB
               hugetlb folio: one entry stands for the whole folio), ``PG_exclusive``
               (``PageAnonExclusive``: set when a fault gives the page to one mapping, cleared
               when fork shares it; mprotect may make only such pages writable), ``PG_thp`` (one
               of the 512 pages of a transparent huge page: a folio of 512 frames, the head's
               number a multiple of 512, each page with its own ``mapcount`` and contents).
``mapcount``   how many page-table entries map the frame *explicitly*: anonymous pages and
               private hugetlb pages.  A huge PMD mapping a transparent huge page counts once in
               each of its 512 pages, so a split (512 PTEs) leaves every count as it was.  This is
               what ``do_wp_page`` consults to decide whether a write to a write-protected
               anonymous page may reuse it.
``stamp``      the page's contents, as an integer the oracle can compare.

Deliberate shortcut for speed: entries that map a page-cache page through a file-backed VMA are
not counted in ``mapcount`` (thousands of processes mapping a 300 GiB segment would otherwise cost
a counter update per page per process).  :func:`ptshare.oracle.invariants.check` recomputes every
mapping count from the page tables and compares.

Where frames come from (``[machine] scattered`` and ``frames_in_order``): a machine that has been
running hands out the first part of what a program allocates from its per-CPU free lists (which
Linux 6.x lets grow to hundreds of MiB) -- pages freed recently, in no particular order -- and
then from free buddy blocks, the smallest first: runs of a few frames in order, each somewhere
else.  The frame table models that with a pool of ``scattered`` bytes of frames, dealt in a random
order (seeded) before any never-used frame, and never-used frames carved in runs of
``frames_in_order`` frames, the runs of each 2 MiB block of frames in a fixed shuffled order;
frames freed are reused first, last freed first.  Which
frames a process's pages got is what :func:`scattered` counts for the cost model: a PTE whose
frame is not next to the previous PTE's is a ``struct page`` the CPU has not prefetched.

Page-table pages are frames too; they are counted (``nr_pagetables``), not stored, since nothing
depends on a table's physical frame.  Frame 0 is never handed out (0 means "no frame" in tables),
and frame 1 is the shared zero page; data frames start at frame 512.
"""

from __future__ import annotations

import numpy as np

from ..errors import PtshareError

PG_ANON = 1
PG_CACHE = 2
PG_HUGE = 4
PG_ZERO = 8
PG_EXCLUSIVE = 16  # PageAnonExclusive: this mapping is known to be the page's only one
PG_THP = 32  # a page of a transparent huge page (an anonymous folio of HUGE_UNITS frames)

ZERO_PFN = 1
HUGE_UNITS = 512  # 4 KiB units in one 2 MiB folio
RESERVE = 1 << 30  # frames reserved (not touched) at start: 4 TiB of 4 KiB frames
# [machine] scattered by default: what a program allocating fresh memory on the project's machine got
# out of order before frames in order came (the fork probe's adjacency, docs/model.md)
DEFAULT_SCATTERED = 256 << 20
DEFAULT_FRAMES_IN_ORDER = 8


class OutOfMemory(PtshareError):
    """The simulated machine has no free memory for an allocation."""

    def __init__(self, needed: int, free: int, limit: int):
        self.needed = needed
        self.free = free
        self.limit = limit
        super().__init__(
            f"out of memory: needed {needed * 4} kB more but only {free * 4} kB of the machine's "
            f"{limit * 4} kB are free; raise [machine] memory or make the scenario smaller"
        )


class FrameTable:
    """The machine's physical memory, in 4 KiB frames (a hugetlb folio is one entry of 512 units)."""

    def __init__(self, memory_bytes: int | None, scattered_bytes: int = DEFAULT_SCATTERED,
                 frames_in_order: int = DEFAULT_FRAMES_IN_ORDER, seed: int = 1):
        if not (0 < frames_in_order <= HUGE_UNITS and HUGE_UNITS % frames_in_order == 0):
            raise PtshareError(f"frames_in_order = {frames_in_order}: must be a power of two from 1 to {HUGE_UNITS}")
        self.limit_units = None if memory_bytes is None else memory_bytes // 4096
        self._pool = min(scattered_bytes // 4096, self.limit_units or RESERVE)  # frames still to deal scattered
        self._seed = seed
        self._run = frames_in_order
        # where the runs of a 2 MiB block of frames are carved, in the order they are handed out
        self._runs = np.random.default_rng(seed).permutation(HUGE_UNITS // frames_in_order) * frames_in_order
        # Reserve the arrays for the whole machine up front: numpy's zeroed allocations are lazy
        # (calloc), so untouched frames cost no memory and the table never has to be copied to grow.
        capacity = min(self.limit_units or RESERVE, RESERVE) + 2
        self.flags = np.zeros(capacity, dtype=np.uint8)
        self.mapcount = np.zeros(capacity, dtype=np.int32)
        self.stamp = np.zeros(capacity, dtype=np.int64)
        self.flags[ZERO_PFN] = PG_ZERO
        self._next = HUGE_UNITS  # the first 2 MiB block holds frame 0 ("no frame") and the zero page
        self._free: list[np.ndarray] = []  # stacks of freed pfns, reused first
        self.nr_units = 0  # 4 KiB units held by data frames
        self.nr_pagetables = 0  # page-table pages (NR_PAGETABLE)
        self.peak_units = 0

    # --- capacity ------------------------------------------------------------------------------

    def _grow(self, needed_pfn: int) -> None:
        capacity = len(self.flags)
        if needed_pfn < capacity:
            return
        new_capacity = max(needed_pfn + 1, capacity * 2)
        for name in ("flags", "mapcount", "stamp"):
            old = getattr(self, name)
            new = np.zeros(new_capacity, dtype=old.dtype)
            new[:capacity] = old
            setattr(self, name, new)

    def free_units(self) -> int | None:
        if self.limit_units is None:
            return None
        return self.limit_units - self.nr_units - self.nr_pagetables

    def _charge(self, units: int) -> None:
        free = self.free_units()
        if free is not None and units > free:
            raise OutOfMemory(units, free, self.limit_units)

    def _note_peak(self) -> None:
        used = self.nr_units + self.nr_pagetables
        if used > self.peak_units:
            self.peak_units = used

    # --- the page allocator --------------------------------------------------------------------

    def alloc(self, n: int, flags: int, stamps: np.ndarray | int = 0) -> np.ndarray:
        """Allocate ``n`` frames with ``flags`` and contents ``stamps``; returns their pfns.

        Raises :class:`OutOfMemory` before changing anything if the machine is full.
        """
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        units = n * (HUGE_UNITS if flags & PG_HUGE else 1)
        self._charge(units)
        pfns = self._take(n)
        self.flags[pfns] = flags
        self.mapcount[pfns] = 0
        self.stamp[pfns] = stamps
        self.nr_units += units
        self._note_peak()
        return pfns

    def alloc_thp(self, n: int, stamps: np.ndarray | int = 0) -> np.ndarray:
        """Allocate ``n`` transparent huge pages (folios of HUGE_UNITS frames each, zeroed or with
        ``stamps`` per frame); returns their head frames, each a multiple of HUGE_UNITS.

        Deliberate shortcut: folios are carved from never-used frames only, and their pages are freed
        one by one as they lose their last mapping (Linux frees a partly unmapped folio once the
        deferred-split shrinker has split it).
        """
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        units = n * HUGE_UNITS
        self._charge(units)
        if self._pool:  # the scattered frames are the small pages' (THP folios need large free blocks)
            self._deal_pool()
        start = self.end
        if start > self._next:  # the frames skipped to align the folio stay free for small pages
            self._free.insert(0, self._carve(start - self._next))
        self._grow(start + units)
        self._next = start + units
        pfns = np.arange(start, start + units, dtype=np.int64)
        self.flags[pfns] = PG_ANON | PG_EXCLUSIVE | PG_THP
        self.mapcount[pfns] = 0
        self.stamp[pfns] = stamps
        self.nr_units += units
        self._note_peak()
        return pfns[::HUGE_UNITS].copy()

    def _carve(self, n: int) -> np.ndarray:
        """The next ``n`` never-used frames: index i of the never-used frames is, inside its 2 MiB
        block, in run ``_runs[(i % 512) // frames_in_order]``."""
        i = np.arange(self._next, self._next + n, dtype=np.int64)
        self._next += n
        self._grow(self.end)
        within = i % HUGE_UNITS
        return i - within + self._runs[within // self._run] + within % self._run

    def _deal_pool(self) -> None:
        """Put the scattered pool on the free stacks (below everything freed): its frames come next,
        in a random order.  Done once, when the first never-used frame is needed."""
        n, self._pool = self._pool, 0
        self._free.insert(0, np.random.default_rng(self._seed + 1).permutation(self._carve(n)))

    def _take(self, n: int) -> np.ndarray:
        if self._pool and n > sum(len(s) for s in self._free):
            self._deal_pool()
        parts = []
        while n and self._free:
            stack = self._free[-1]
            if len(stack) <= n:
                parts.append(self._free.pop())
                n -= len(stack)
            else:
                parts.append(stack[-n:])
                self._free[-1] = stack[:-n]
                n = 0
        if n:
            parts.append(self._carve(n))
        pfns = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return pfns

    def free(self, pfns: np.ndarray) -> None:
        """Return frames to the allocator (``free_pages``)."""
        if len(pfns) == 0:
            return
        pfns = np.asarray(pfns, dtype=np.int64)
        huge = (self.flags[pfns] & PG_HUGE) != 0
        self.nr_units -= int(len(pfns) + huge.sum() * (HUGE_UNITS - 1))
        self.flags[pfns] = 0
        self.mapcount[pfns] = 0
        self.stamp[pfns] = 0
        self._free.append(pfns.copy())

    def alloc_pgtables(self, n: int) -> None:
        """Charge ``n`` page-table pages (``pagetable_alloc`` + ``NR_PAGETABLE``)."""
        if n > 0:
            self._charge(n)
        self.nr_pagetables += n
        self._note_peak()

    def free_pgtables(self, n: int) -> None:
        self.nr_pagetables -= n

    # --- queries -------------------------------------------------------------------------------

    @property
    def end(self) -> int:
        """One past the highest frame ever handed out: never-used frames are carved in runs
        shuffled inside each 2 MiB block, so the block of the last one handed out counts whole."""
        return -(-self._next // HUGE_UNITS) * HUGE_UNITS

    def used_pfns(self) -> np.ndarray:
        """Every allocated data frame (not the zero page)."""
        live = (self.flags[: self.end] & (PG_ANON | PG_CACHE)) != 0
        return np.flatnonzero(live)


def scattered(pfn: np.ndarray, mask: np.ndarray) -> int:
    """Of the entries ``mask`` selects in rows of frame numbers (one row per PTE table), how many
    map a frame that is not next to the previous entry's (one more or one less: the prefetcher
    follows a stream of ``struct page`` lines either way).  A row's first entry, and one after an
    entry not selected, are."""
    follows = np.zeros_like(mask)
    follows[:, 1:] = mask[:, :-1] & (np.abs(pfn[:, 1:] - pfn[:, :-1]) == 1)
    return int(np.count_nonzero(mask & ~follows))
