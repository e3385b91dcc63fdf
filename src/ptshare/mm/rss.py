"""Resident set size, counted from the page tables: what ``MM_ANONPAGES``, ``MM_FILEPAGES`` and
``MM_SHMEMPAGES`` hold in Linux.

Linux keeps these as counters updated by every fault and zap; here they are counted from the
tables when asked, which gives the same numbers for the policies Linux has and a well-defined
one for shared tables: a page mapped through a table an mm uses is in that mm's RSS, whoever
faulted it in -- except in a table a host mm holds (mshare), whose faults the series counts in
the host's RSS, none of the processes'.  The zero pages (4 KiB and huge) and hugetlb pages are not
counted, as in Linux; a transparent huge page mapped by a PMD counts as its 512 pages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..arch import E_SHARED, E_TABLE, PAGE_SHIFT, PTRS_PER_TABLE, entry_tag, range_bits
from .frames import HUGE_UNITS, ZERO_PFN
from .huge_memory import nr_huge_pmds
from .pagewalk import PMD, PTE, PUD, entry_tables, span_slices, walk

if TYPE_CHECKING:
    from .kernel import Kernel
    from .mm_struct import MM
    from .vma import VMA


def rss_pages(k: Kernel, mm: MM, memo: dict | None = None) -> tuple[int, int, int, int]:
    """(anonymous, file, shmem) pages mapped by ``mm``'s page tables, and the anonymous pages among
    them that huge PMDs map (``AnonHugePages``).

    ``memo`` may be shared by calls made while no table changes (one report of every process):
    processes whose PMD tables share storage are then counted once.
    """
    memo = {} if memo is None else memo
    anon = file = shmem = huge = 0
    for vma in mm.vmas:
        if vma.is_hugetlb:
            continue
        implicit, explicit, thp = _count_vma(k, mm, vma, memo)
        anon += explicit
        huge += thp
        if vma.obj is not None:
            if vma.obj.is_shmem:
                shmem += implicit
            else:
                file += implicit
    return anon, file, shmem, huge


def _count_vma(k: Kernel, mm: MM, vma: VMA, memo: dict) -> tuple[int, int, int]:
    """Present entries of ``vma`` that map their file page implicitly, explicit non-zero pages, and
    the pages of those that huge PMDs map."""
    implicit = explicit = huge = 0
    span = k.geom.pmd.span
    host = k.policy.host_levels
    for pud in walk(k, mm, vma.vm_start, vma.vm_end, PUD, write=False):
        if pud.sid and PUD in host:
            continue  # a host mm's table (mshare): its faults count in the host's RSS
        # The PMD tables of one PUD table looked up at once, shared or not (a walk to the PMD level
        # would visit them one by one, and this runs for every VMA of every process reported).
        i0, i1, bases = span_slices(k, PUD, pud.start, pud.end)
        _sids, cids = entry_tables(k, k.stores[PUD].entries[pud.cid, i0:i1])
        for base, cid in zip(bases.tolist(), cids.tolist(), strict=True):
            if not cid:
                continue
            lo, hi = max(pud.start, base), min(pud.end, base + span)
            whole = lo == base and hi == base + span
            if whole and cid in memo:
                got = memo[cid]
            else:
                got = _count_pmd(k, cid, lo, hi)
                if whole:
                    memo[cid] = got
            implicit += got[0]
            explicit += got[1]
            huge += got[2]
    return implicit, explicit, huge


def _count_pmd(k: Kernel, pmd_cid: int, start: int, end: int) -> tuple[int, int, int]:
    entries = k.stores[PMD].entries[pmd_cid]
    i0, i1, span_addrs = span_slices(k, PMD, start, end)
    e = entries[i0:i1]
    tag = entry_tag(e)
    thp = nr_huge_pmds(k, e)[1] * HUGE_UNITS  # folios mapped by huge PMDs (AnonHugePages)
    rows = np.flatnonzero((tag == E_TABLE) | (tag == E_SHARED))
    if len(rows) == 0:
        return 0, thp, thp
    _sids, cids = entry_tables(k, e[rows])
    pte = k.stores[PTE]
    lo = np.clip((start - span_addrs[rows]) >> PAGE_SHIFT, 0, PTRS_PER_TABLE)
    hi = np.clip((end - span_addrs[rows]) >> PAGE_SHIFT, 0, PTRS_PER_TABLE)
    whole = (lo == 0) & (hi == PTRS_PER_TABLE)
    total = int(pte.nr_present(cids[whole]).sum()) if whole.any() else 0
    explicit_rows = pte.row[cids] > 0
    explicit = 0
    if explicit_rows.any() or not whole.all():
        sel = explicit_rows | ~whole
        present, _w, pfn = pte.load(cids[sel])
        in_range = range_bits(lo[sel], hi[sel]) & present
        explicit = int((in_range & (pfn > ZERO_PFN)).sum())
        zero = int((in_range & (pfn == ZERO_PFN)).sum())
        part = ~whole[sel]
        total += int(in_range[part].sum())
        total -= zero
    return total - explicit, explicit + thp, thp
