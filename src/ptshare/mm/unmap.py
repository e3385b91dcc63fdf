"""Tearing mappings down: models ``zap_page_range_single()``/``unmap_vmas()`` and ``free_pgtables()``
(mm/memory.c).

Zapping clears entries and drops the pages they mapped; it frees no page table, except that
MADV_DONTNEED frees the PTE tables it empties whole (:func:`reclaim_pte_tables`).  Page tables go
in :func:`free_pgtables`, only where no remaining VMA still needs them (the ``floor`` and
``ceiling`` rules of ``free_pgd_range``).  A table shared with other mms is not zapped: the mm
lets go of it (McCracken's ``pt_check_unshare_pte``, ``huge_pmd_unshare``) and the others keep it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..arch import (
    E_LEAF,
    E_NONE,
    E_SHARED,
    E_TABLE,
    PAGE_SHIFT,
    PTRS_PER_TABLE,
    entry_tag,
    entry_value,
    leaf_explicit,
    mk_table,
    range_bits,
)
from ..errors import InternalError
from . import ptshare
from .frames import ZERO_PFN, scattered
from .huge_memory import pmd_trans_huge, split_huge_pmd_range_ends, zap_huge_pmds
from .pagewalk import PMD, PTE, Shared, Table, account_free, shared_entries, shared_entry, span_slices, walk

if TYPE_CHECKING:
    from .kernel import Kernel
    from .mm_struct import MM

_U64 = (1 << 64) - 1


def zap_page_range(k: Kernel, mm: MM, start: int, end: int, *, fullmm: bool = False) -> int:
    """Clear every entry mapping [start, end) and drop the pages; returns the entries cleared.

    A table shared with others is let go of instead (:class:`Shared` ``ZAP``), or, when the whole
    mm is going (``fullmm``, exit), always dropped.  A huge PMD the range covers in part is split
    first (zap_pmd_range())."""
    how = Shared.DROP if fullmm else Shared.ZAP
    split_huge_pmd_range_ends(k, mm, start, end)
    cleared = 0
    for pmd in walk(k, mm, start, end, PMD, how=how):
        cleared += zap_pmd_range(k, mm, pmd, how)
    if cleared:
        k.flush_tlb_mm(mm)
    return cleared


def zap_pmd_range(k: Kernel, mm: MM, pmd: Table, how: Shared) -> int:
    """Models zap_pmd_range()/zap_pte_range() for every PTE table (or huge leaf) under one PMD table."""
    start, end = pmd.start, pmd.end
    entries = k.stores[PMD].entries[pmd.cid]
    i0, i1, span_addrs = span_slices(k, PMD, start, end)
    tag = entry_tag(entries[i0:i1])
    cleared = 0
    leaf = np.flatnonzero(tag == E_LEAF)
    if len(leaf):
        e = entries[i0:i1]
        thp = pmd_trans_huge(k, e[leaf])
        if thp.any():
            zap_huge_pmds(k, mm, e[leaf][thp], _drop_anon)
        other = e[leaf][~thp]
        _drop_anon(k, entry_value(other[leaf_explicit(other)]))
        entries[i0 + leaf] = 0
        cleared += len(leaf)
    shared = np.flatnonzero(tag == E_SHARED)
    tables = [(int(shared[n]), t.cid) for n, t in shared_entries(k, mm, pmd, i0 + shared, span_addrs[shared], how)
              if t.sid]  # shared tables this mm zaps for every user: it is the last one
    e = entries[i0:i1]
    own = np.flatnonzero(entry_tag(e) == E_TABLE)
    if len(own) == 0 and not tables:
        return cleared
    pte = k.stores[PTE]
    rows = np.concatenate([own, np.array([n for n, _ in tables], dtype=np.int64)])
    cids = np.concatenate([entry_value(e[own]), np.array([c for _, c in tables], dtype=np.int64)])
    lo = np.clip((start - span_addrs[rows]) >> PAGE_SHIFT, 0, PTRS_PER_TABLE)
    hi = np.clip((end - span_addrs[rows]) >> PAGE_SHIFT, 0, PTRS_PER_TABLE)
    present, write, pfn = pte.load(cids)
    mask = range_bits(lo, hi) & present
    if not mask.any():
        return cleared
    gone = pfn[mask]
    _drop_anon(k, gone[gone > ZERO_PFN])
    cleared += int(mask.sum())
    # A page-cache page is mapped implicitly (pfn 0: found through the VMA's object); the zero
    # page is no "normal" page to zap_present_ptes(), which only clears its entry.
    k.events.add("ptes_zapped_rmap", len(gone) - int(np.count_nonzero(gone == ZERO_PFN)))
    k.events.add("ptes_zapped_file", int(np.count_nonzero(gone == 0)))
    k.events.add("ptes_zapped_scattered", scattered(pfn, mask & (pfn > ZERO_PFN)))
    present &= ~mask
    write &= ~mask
    pfn[mask] = 0
    touched = mask.any(axis=1)
    nown = len(own)
    own_t = np.flatnonzero(touched[:nown])
    if len(own_t):
        new = pte.cow(cids[own_t])
        pte.store(new, present[own_t], write[own_t], pfn[own_t])
        entries[i0 + own[own_t]] = mk_table(new)
    for m in np.flatnonzero(touched[nown:]).tolist():
        n = nown + m
        pte.store(np.array([cids[n]]), present[n:n + 1], write[n:n + 1], pfn[n:n + 1])
    k.events.add("ptes_zapped", int(mask.sum()))
    return cleared


def _drop_anon(k: Kernel, pfns: np.ndarray) -> None:
    """One mapping fewer for each anonymous page; free those no longer mapped."""
    if len(pfns) == 0:
        return
    frames = k.frames
    frames.mapcount[pfns] -= 1
    dead = pfns[frames.mapcount[pfns] == 0]
    if len(dead):
        frames.free(dead)
        k.events.add("pages_freed", len(dead))


def reclaim_pte_tables(k: Kernel, mm: MM, start: int, end: int) -> None:
    """Models the ``reclaim_pt`` path of zap_pte_range() (mm/pt_reclaim.c, CONFIG_PT_RECLAIM, Linux
    6.15+): after MADV_DONTNEED has zapped [start, end) of one VMA, each PTE table whose whole 2 MiB
    span lies inside it is empty, and is freed (``try_get_and_clear_pmd`` + ``free_pte``).  Tables
    the range covers only in part stay, and so do the PMD and upper tables.
    """
    pmd_size = k.geom.pmd_size
    first = -(-start // pmd_size) * pmd_size
    last = end // pmd_size * pmd_size
    if first >= last:
        return
    for pmd in walk(k, mm, first, last, PMD, levels=()):  # shared PMD and PUD tables stay
        _free_pte_tables(k, mm, pmd.cid, pmd.box, pmd.start, pmd.end)


# --- freeing page tables -----------------------------------------------------------------------

def free_pgtables(k: Kernel, mm: MM, ranges: list[tuple[int, int]], floor: int, ceiling: int) -> None:
    """Models free_pgtables(): free the tables of unmapped ``ranges`` that nothing else needs.

    ``floor`` is the end of the VMA below, ``ceiling`` the start of the VMA above (0: none).
    Nearby ranges (within a PMD) are freed in one call, as the kernel gathers nearby VMAs.
    """
    pmd_size = k.geom.pmd_size
    groups: list[list[int]] = []
    for start, end in sorted(ranges):
        if groups and start <= groups[-1][1] + pmd_size:
            groups[-1][1] = max(groups[-1][1], end)
        else:
            groups.append([start, end])
    for n, (start, end) in enumerate(groups):
        nxt = groups[n + 1][0] if n + 1 < len(groups) else ceiling
        free_pgd_range(k, mm, start, end, floor, nxt)


def free_pgd_range(k: Kernel, mm: MM, addr: int, end: int, floor: int, ceiling: int) -> None:
    """Models free_pgd_range(): the PTE tables of [addr, end) go, and each directory table whose
    whole span lies inside [floor, ceiling) after rounding goes with them."""
    pmd_mask = ~(k.geom.pmd_size - 1)
    addr &= pmd_mask
    if addr < floor:
        addr += k.geom.pmd_size
    if ceiling:
        ceiling &= pmd_mask
        if not ceiling:
            return
    if ((end - 1) & _U64) > ((ceiling - 1) & _U64):
        end -= k.geom.pmd_size
    if addr > end - 1:
        return
    top = len(k.geom.levels) - 1
    mm.pgd = k.stores[top].cow(mm.pgd)
    _free_dir(k, mm, top, mm.pgd, 0, addr, end, floor, ceiling)


def _free_dir(k: Kernel, mm: MM, lvl: int, cid: int, box: int, start: int, end: int, floor: int,
              ceiling: int) -> None:
    """Free what lies below the level-``lvl`` table ``cid`` (inside the shared table ``box``, if
    not 0) in [start, end)."""
    store = k.stores[lvl]
    if lvl == PMD:
        _free_pte_tables(k, mm, cid, box, start, end)
        return
    level = k.geom.levels[lvl]
    child_span = k.geom.levels[lvl - 1].span
    addr = start
    while addr < end:
        nxt = k.geom.addr_end(level, addr, end)
        i = k.geom.index(level, addr)
        entry = int(store.entries[cid, i])
        tag = entry_tag(entry)
        if tag == E_NONE:
            addr = nxt
            continue
        if tag == E_SHARED:
            table = shared_entry(k, mm, lvl - 1, cid, i, addr, nxt, Shared.DROP, box)
            if table is None:
                addr = nxt
                continue
            child, child_sid = table.cid, table.sid
        else:
            child, child_sid = k.stores[lvl - 1].cow(int(entry_value(entry))), 0
            store.entries[cid, i] = mk_table(child)
        _free_dir(k, mm, lvl - 1, child, child_sid or box, addr, nxt, floor, ceiling)
        if _whole_span_free(child_span, addr, nxt, floor, ceiling):
            store.entries[cid, i] = 0
            if child_sid:
                ptshare.free_last(k, mm, lvl - 1, child_sid)
                k.shared.put(child_sid)
            else:
                k.stores[lvl - 1].put(child)
                account_free(k, mm, lvl - 1, 1, box)
        addr = nxt


def _whole_span_free(span: int, start: int, end: int, floor: int, ceiling: int) -> bool:
    """The test at the end of free_pmd_range()/free_pud_range()/free_p4d_range()."""
    mask = ~(span - 1)
    if (start & mask) < floor:
        return False
    if ceiling:
        ceiling &= mask
        if not ceiling:
            return False
    return ((end - 1) & _U64) <= ((ceiling - 1) & _U64)


def _free_pte_tables(k: Kernel, mm: MM, pmd_cid: int, box: int, start: int, end: int) -> None:
    """Models free_pte_range() for each PMD entry in [start, end) of the PMD table ``pmd_cid``
    (inside the shared table ``box``, if not 0)."""
    entries = k.stores[PMD].entries[pmd_cid]
    i0, i1, addrs = span_slices(k, PMD, start, end)
    e = entries[i0:i1]
    tag = entry_tag(e)
    own = np.flatnonzero(tag == E_TABLE)
    if len(own):
        k.stores[PTE].put(entry_value(e[own]))
        entries[i0 + own] = 0
        account_free(k, mm, PTE, len(own), box)
    for n in np.flatnonzero(tag == E_SHARED).tolist():
        a = int(addrs[n])
        table = shared_entry(k, mm, PTE, pmd_cid, i0 + n, max(start, a), min(end, a + k.geom.pte.span), Shared.DROP,
                             box, write=False)
        if table is not None:  # the last user
            ptshare.free_last(k, mm, PTE, table.sid)
            entries[i0 + n] = 0
            k.shared.put(table.sid)
    leaves = np.flatnonzero(tag == E_LEAF)
    if len(leaves):
        raise InternalError("free_pgtables found a huge page still mapped", mm=mm.id,
                            addr=hex(start), entries=e[leaves][:4].tolist())
