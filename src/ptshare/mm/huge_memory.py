"""Transparent huge pages for anonymous memory: models mm/huge_memory.c (and the THP cases of
mm/memory.c and include/linux/huge_mm.h) as Linux 6.18 has them.

A transparent huge page (THP) is a folio of 512 frames mapped by one PMD leaf (``pmd_trans_huge``):
the leaf holds the folio's head frame (:meth:`FrameTable.alloc_thp`), or the zero page for the
huge zero page.  What the kernel does, and this module with it:

* **Which VMAs** (``thp_vma_allowable_order``): private anonymous ones, with ``enabled = always``,
  or with ``madvise`` and ``MADV_HUGEPAGE`` (``VM_HUGEPAGE``); never with ``MADV_NOHUGEPAGE``.
  A fault maps a huge page only where the 2 MiB-aligned range lies inside the VMA
  (``thp_vma_suitable_order``) and the PMD entry is empty.
* **Faults** (``do_huge_pmd_anonymous_page``): a write maps a new zeroed folio, a read the huge
  zero page (when ``use_zero_page``), one fault for the whole 2 MiB; a write to the huge zero page
  maps a new folio (``do_huge_zero_wp_pmd``); a write to a write-protected THP reuses it when it is
  exclusive (``PageAnonExclusive``, or no other mapping of any of its pages) and otherwise splits the
  PMD and lets ``do_wp_page`` copy the one 4 KiB page (``do_huge_pmd_wp_page``: VM_FAULT_FALLBACK).
* **The deposited table** (``pgtable_trans_huge_deposit``): every huge PMD, zero page included,
  comes with a PTE table set aside for a later split and counted as the mm's (``mm_inc_nr_ptes``),
  so VmPTE does not shrink with THP.  Its contents are never looked at until a split, so it is
  counted here, not stored; a split stores the 512 entries in it.
* **fork** (``copy_huge_pmd``): the leaf is write-protected in parent and child, every page of the
  folio gains a mapping and loses ``PageAnonExclusive``, the child deposits a table of its own.
* **Splits** (``__split_huge_pmd_locked``): the deposited table becomes the PMD's PTE table, its
  512 entries mapping the folio's pages (or the 4 KiB zero page) with the leaf's write bit.
  munmap, mprotect, mremap and MADV_DONTNEED split a huge PMD they cover in part
  (:func:`split_huge_pmd_address` at the ends of their range); a range covering it whole zaps it
  with its deposited table (``zap_huge_pmd``), changes its protection (``change_huge_pmd``).
* RSS counts a folio mapped by a PMD as 512 anonymous pages (``AnonHugePages``); the huge zero
  page counts nothing.

Not modelled: khugepaged (the asynchronous collapse of 4 KiB pages back into a huge page), the
allocation failing (``thp_fault_fallback``), mTHP sizes below 2 MiB, THP for shmem and files, the
deferred split of a partly mapped folio (its unmapped pages are freed at once, see
:meth:`FrameTable.alloc_thp`), and ``defrag``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from ..arch import (
    E_LEAF,
    E_NONE,
    PAGE_SHIFT,
    PTRS_PER_TABLE,
    entry_tag,
    entry_value,
    leaf_explicit,
    leaf_mkwrite,
    leaf_write,
    leaf_wrprotect,
    mk_leaf,
    mk_table,
)
from .access import write_stamp
from .frames import HUGE_UNITS, PG_EXCLUSIVE, PG_THP, ZERO_PFN
from .pagewalk import PMD, PTE, account_alloc, account_free, span_slices, walk
from .pte_fault import anon_vma_prepare
from .vma import VM_HUGEPAGE, VM_NOHUGEPAGE

if TYPE_CHECKING:
    from .kernel import Kernel
    from .mm_struct import MM, Task
    from .vma import VMA

THP_MODES = ("always", "madvise", "never")
_SUB = np.arange(HUGE_UNITS, dtype=np.int64)


# --- which VMAs and entries --------------------------------------------------------------------

def thp_vma_allowable(k: Kernel, vma: VMA) -> bool:
    """Models thp_vma_allowable_order() for the PMD order, for anonymous memory."""
    if not vma.is_anonymous or vma.is_shared or vma.is_hugetlb or vma.vm_flags & VM_NOHUGEPAGE:
        return False
    return k.thp == "always" or (k.thp == "madvise" and bool(vma.vm_flags & VM_HUGEPAGE))


def thp_vma_suitable(k: Kernel, vma: VMA, haddr: np.ndarray) -> np.ndarray:
    """Models thp_vma_suitable_order(): the 2 MiB ranges at ``haddr`` lie inside the VMA, and the
    VMA's page offset is aligned as its address is (it may not be after mremap moves it)."""
    size = k.geom.pmd_size
    aligned = ((vma.vm_start >> PAGE_SHIFT) - vma.vm_pgoff) % (size >> PAGE_SHIFT) == 0
    return aligned & (haddr >= vma.vm_start) & (haddr + size <= vma.vm_end)


def pmd_trans_huge(k: Kernel, entries: np.ndarray) -> np.ndarray:
    """Models pmd_trans_huge(): a PMD leaf mapping a transparent huge page or the huge zero page
    (hugetlb leaves map their file's page, or a private hugetlb page, never these)."""
    leaf = (entry_tag(entries) == E_LEAF) & leaf_explicit(entries)
    pfn = np.where(leaf, entry_value(entries), 0)
    return leaf & ((pfn == ZERO_PFN) | ((k.frames.flags[pfn] & PG_THP) != 0))


def is_huge_zero_pmd(entries: np.ndarray) -> np.ndarray:
    return (entry_tag(entries) == E_LEAF) & leaf_explicit(entries) & (entry_value(entries) == ZERO_PFN)


def leaf_pfns(k: Kernel, entries: np.ndarray, addrs: np.ndarray) -> np.ndarray:
    """The 4 KiB frame each address reaches through its PMD leaf: a page of a THP, or the leaf's frame."""
    pfn = entry_value(entries)
    thp = (pfn > ZERO_PFN) & ((k.frames.flags[pfn] & PG_THP) != 0)
    return np.where(thp, pfn + ((addrs >> PAGE_SHIFT) & (HUGE_UNITS - 1)), pfn)


def folio_pages(heads: np.ndarray) -> np.ndarray:
    """Every frame of the folios at ``heads`` (int64[n * 512])."""
    return (np.asarray(heads, dtype=np.int64)[:, None] + _SUB).ravel()


def _deposit(k: Kernel, mm: MM, n: int) -> None:
    """pgtable_trans_huge_deposit() + mm_inc_nr_ptes() for ``n`` new huge PMDs."""
    account_alloc(k, mm, PTE, n)
    k.events.add("thp_deposit", n)


def _withdraw_free(k: Kernel, mm: MM, n: int) -> None:
    """zap_deposited_table(): the deposited tables of ``n`` huge PMDs zapped go with them."""
    account_free(k, mm, PTE, n)


# --- the fault path ----------------------------------------------------------------------------

def do_huge_pmd_faults(k: Kernel, task: Task, vma: VMA, old: np.ndarray, span_addr: np.ndarray,
                       accesses, write: bool, store) -> tuple[np.ndarray, int]:
    """The faults of a touch in the 2 MiB spans whose PMD entries are ``old`` (one per span, at
    ``span_addr``), where a huge PMD is or may be mapped.

    ``accesses(rows)`` gives the accesses into the spans ``rows`` in order (row, entry, address);
    ``store(rows, entries)`` writes new PMD entries.  Returns which spans are done, and the faults
    taken.  A span whose huge PMD a write had to split is not done: ``old`` then holds its new PTE
    table, and the write's fault is the PTE-level fault that follows (``VM_FAULT_FALLBACK``).
    """
    done = np.zeros(len(old), dtype=bool)
    huge = pmd_trans_huge(k, old)
    if thp_vma_allowable(k, vma):
        huge |= (entry_tag(old) == E_NONE) & thp_vma_suitable(k, vma, span_addr)
    rows = np.flatnonzero(huge)
    if len(rows) == 0:
        return done, 0
    e = old[rows]
    none = entry_tag(e) == E_NONE
    zero = is_huge_zero_pmd(e)
    faults = 0
    if not write:
        done[rows] = True
        if none.any():
            faults += _huge_read_faults(k, task, vma, rows[none], store)
        return done, faults
    writable = ~none & leaf_write(e)
    wp = ~none & ~zero & ~writable
    reuse = np.zeros(len(rows), dtype=bool)
    if wp.any():
        reuse[wp] = _can_reuse(k, entry_value(e[wp]))
    split = wp & ~reuse
    if split.any():
        cids = split_huge_pmd_entries(k, e[split])
        old[rows[split]] = mk_table(cids)
        store(rows[split], old[rows[split]])
    new = none | zero
    heads = np.where(new | split, 0, entry_value(e))
    if new.any():
        anon_vma_prepare(vma)
        heads[new] = k.frames.alloc_thp(int(new.sum()))
        k.frames.mapcount[folio_pages(heads[new])] = 1
        _deposit(k, task.mm, int(none.sum()))
        k.events.add("thp_fault_alloc", int(new.sum()))
    if reuse.any():
        k.frames.flags[folio_pages(heads[reuse])] |= PG_EXCLUSIVE
        k.events.add("thp_wp_reuse", int(reuse.sum()))
    mapped = new | reuse
    if mapped.any():
        entries = mk_leaf(np.ones(int(mapped.sum()), dtype=bool), heads[mapped])
        old[rows[mapped]] = entries
        store(rows[mapped], entries)
    faults += int(mapped.sum())
    keep = ~split
    done[rows[keep]] = True
    inv, ent, addrs = accesses(rows[keep])
    k.frames.stamp[heads[keep][inv] + ent] = write_stamp(k.write_seq, addrs)
    return done, faults


def _huge_read_faults(k: Kernel, task: Task, vma: VMA, rows: np.ndarray, store) -> int:
    """do_huge_pmd_anonymous_page() for reads: the huge zero page, or a new folio without it.  Either
    way the VMA gets its anon_vma first (``vmf_anon_prepare``), so that fork copies even a huge zero
    page -- unlike do_anonymous_page(), which maps the 4 KiB zero page without one."""
    n = len(rows)
    anon_vma_prepare(vma)
    if k.thp_use_zero_page:
        store(rows, mk_leaf(np.zeros(n, dtype=bool), np.full(n, ZERO_PFN, dtype=np.int64)))
        k.events.add("thp_zero_page", n)
    else:
        heads = k.frames.alloc_thp(n)
        k.frames.mapcount[folio_pages(heads)] = 1
        store(rows, mk_leaf(np.ones(n, dtype=bool), heads))
        k.events.add("thp_fault_alloc", n)
    _deposit(k, task.mm, n)
    return n


def _can_reuse(k: Kernel, heads: np.ndarray) -> np.ndarray:
    """do_huge_pmd_wp_page(): reuse when PageAnonExclusive, or when the folio has no other
    reference (no other mapping of any of its pages)."""
    exclusive = (k.frames.flags[heads] & PG_EXCLUSIVE) != 0
    alone = k.frames.mapcount[folio_pages(heads)].reshape(len(heads), HUGE_UNITS).max(axis=1) == 1
    return exclusive | alone


# --- splitting ---------------------------------------------------------------------------------

def split_huge_pmd_entries(k: Kernel, entries: np.ndarray) -> np.ndarray:
    """Models __split_huge_pmd_locked() for the huge PMDs ``entries``: their deposited tables, now
    filled with 512 entries each, as new PTE-table contents (ids).  Counts do not change: each page
    keeps its mapping (now through a PTE) and the tables were already the mm's."""
    n = len(entries)
    heads = entry_value(entries)
    present = np.ones((n, PTRS_PER_TABLE), dtype=bool)
    write = np.repeat(leaf_write(entries)[:, None], PTRS_PER_TABLE, axis=1)
    pfn = np.where((heads == ZERO_PFN)[:, None], ZERO_PFN, heads[:, None] + _SUB)
    k.events.add("thp_split_pmd", n)
    return k.stores[PTE].new(present, write, pfn)


def split_huge_pmd_address(k: Kernel, mm: MM, addr: int) -> None:
    """Models split_huge_pmd_address(): split a huge PMD that ``addr`` falls inside (not at its start),
    as a VMA boundary or the end of a range about to be zapped, protected or moved lands there."""
    size = k.geom.pmd_size
    if addr % size == 0:
        return
    pmd = next(walk(k, mm, addr, addr + 1, PMD, write=False, levels=()), None)
    if pmd is None or not pmd_trans_huge(k, k.stores[PMD].entries[pmd.cid, k.geom.index(k.geom.pmd, addr)])[()]:
        return
    split_huge_pmds(k, mm, addr & ~(size - 1), (addr & ~(size - 1)) + size)


def split_huge_pmd_range_ends(k: Kernel, mm: MM, start: int, end: int) -> None:
    """The huge PMDs an operation on [start, end) covers only in part are split first."""
    split_huge_pmd_address(k, mm, start)
    split_huge_pmd_address(k, mm, end)


def split_huge_pmds(k: Kernel, mm: MM, start: int, end: int) -> None:
    """Split every huge PMD of ``mm`` in [start, end) (2 MiB-aligned), in place."""
    for cid, idx, _addrs in _huge_pmds(k, mm, start, end):
        k.stores[PMD].entries[cid, idx] = mk_table(split_huge_pmd_entries(k, k.stores[PMD].entries[cid, idx]))
        k.flush_tlb_mm(mm)


def _huge_pmds(k: Kernel, mm: MM, start: int, end: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """For each PMD table with huge PMDs in [start, end) (2 MiB-aligned): the table, made private to
    ``mm`` so that the caller may change it, the indices of those entries and their addresses.
    (Huge PMDs are never in a shared PMD table: no policy shares those of private anonymous memory.)"""
    for pmd in walk(k, mm, start, end, PMD, levels=()):
        i0, i1, addrs = span_slices(k, PMD, pmd.start, pmd.end)
        huge = np.flatnonzero(pmd_trans_huge(k, k.stores[PMD].entries[pmd.cid, i0:i1]))
        if len(huge):
            yield pmd.cid, i0 + huge, addrs[huge]


# --- zap, fork, mprotect on whole huge PMDs ------------------------------------------------------

def zap_huge_pmds(k: Kernel, mm: MM, entries: np.ndarray, drop_anon) -> None:
    """Models zap_huge_pmd() for the huge PMDs ``entries`` (already cleared by the caller): every
    page of each folio loses a mapping (``drop_anon`` frees the pages left unmapped), the deposited
    tables are freed.  The huge zero page is only unmapped."""
    heads = entry_value(entries)
    folios = heads[heads != ZERO_PFN]
    if len(folios):
        drop_anon(k, folio_pages(folios))
    _withdraw_free(k, mm, len(entries))
    k.events.add("thp_zap_pmd", len(entries))


def copy_huge_pmds(k: Kernel, dst_mm: MM, entries: np.ndarray, cow: bool) -> np.ndarray:
    """Models copy_huge_pmd() for the huge PMDs ``entries`` of the parent: returns the entries both
    now hold (write-protected for a copy-on-write mapping); every page of each folio gains a mapping
    and loses ``PageAnonExclusive`` (``folio_try_dup_anon_rmap_pmd``); the child deposits a table
    of its own for each."""
    out = leaf_wrprotect(entries) if cow else entries
    heads = entry_value(entries)
    folios = folio_pages(heads[heads != ZERO_PFN])
    k.frames.mapcount[folios] += 1
    k.frames.flags[folios] &= ~np.uint8(PG_EXCLUSIVE)
    _deposit(k, dst_mm, len(entries))
    k.events.add("huge_pmds_copied", len(entries))
    return out


def change_huge_pmds(k: Kernel, vma: VMA, entries: np.ndarray, writable: bool) -> np.ndarray:
    """Models change_huge_pmd() for huge PMDs a protection change covers whole: write-protect them,
    or, when write is granted, make writable those of exclusive folios (``can_change_pmd_writable``:
    ``PageAnonExclusive``), as change_pte_range() does for small pages."""
    wp = leaf_wrprotect(entries)
    if not writable:
        return wp
    heads = entry_value(entries)
    ok = (heads != ZERO_PFN) & ((k.frames.flags[heads] & PG_EXCLUSIVE) != 0)
    return np.where(ok, leaf_mkwrite(wp), wp)


def move_huge_pmds(k: Kernel, mm: MM, old_addr: int, new_addr: int, length: int, install) -> None:
    """The huge PMDs of [old_addr, old_addr + length), before mremap moves its entries: models
    move_huge_pmd() where the source and destination are equally aligned (the leaf moves, with its
    deposited table: no count changes), and split_huge_pmd() where they are not.  ``install(addrs,
    entries)`` places leaves at the destination."""
    size = k.geom.pmd_size
    first = -(-old_addr // size) * size
    last = (old_addr + length) // size * size
    split_huge_pmd_range_ends(k, mm, old_addr, old_addr + length)
    if first >= last:
        return
    if (new_addr - old_addr) % size:
        split_huge_pmds(k, mm, first, last)
        return
    pmd = k.stores[PMD]
    moved_addrs, moved = [], []
    for cid, idx, addrs in _huge_pmds(k, mm, first, last):
        moved.append(pmd.entries[cid, idx].copy())
        moved_addrs.append(addrs)
        pmd.entries[cid, idx] = 0
    if moved:
        addrs = np.concatenate(moved_addrs)
        install(addrs - old_addr + new_addr, np.concatenate(moved))
        k.events.add("thp_move_pmd", len(addrs))


def nr_huge_pmds(k: Kernel, entries: np.ndarray) -> tuple[int, int]:
    """(huge PMDs, of which folios) among ``entries``: their deposited tables and AnonHugePages."""
    huge = pmd_trans_huge(k, entries)
    return int(huge.sum()), int((huge & ~is_huge_zero_pmd(entries)).sum())
