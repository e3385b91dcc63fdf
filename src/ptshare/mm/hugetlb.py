"""hugetlb faults: models hugetlb_fault() -> huge_pte_alloc() (with huge_pmd_share()),
hugetlb_no_page() and hugetlb_wp() (mm/hugetlb.c).

A hugetlb page is a 2 MiB leaf in a PMD table.  One fault maps one page; there is no fault-around.
A VMA with ``VM_MAYSHARE`` that covers a whole 1 GiB window shares its PMD table with partners
(see :mod:`ptshare.mm.ptshare`); a process that attaches a partner's table takes one fault there and
then finds every page the partners mapped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..arch import (
    E_LEAF,
    E_NONE,
    entry_tag,
    entry_value,
    leaf_explicit,
    leaf_write,
    mk_leaf,
    mk_table,
)
from . import ptshare
from .access import Accesses, write_stamp
from .frames import PG_ANON, PG_EXCLUSIVE, PG_HUGE
from .pagewalk import PMD, PUD, Table, account_alloc, entry_tables
from .rmap import anon_vma_prepare
from .vma import VM_WRITE, VMA

if TYPE_CHECKING:
    from .kernel import Kernel
    from .mm_struct import Task


def hugetlb_fault_regions(k: Kernel, task: Task, vma: VMA, pud_table: Table, bases: np.ndarray, acc: Accesses,
                          write: bool) -> int:
    """The faults of a touch in the 1 GiB windows at ``bases`` of one PUD table; returns min_flt."""
    pud = k.stores[PUD]
    pud_cid = pud_table.cid
    window = k.geom.pmd.span
    idx = (bases >> k.geom.pud.shift) & 511
    entries = pud.entries[pud_cid, idx]
    none = entry_tag(entries) == E_NONE
    attached = np.zeros(len(bases), dtype=bool)
    if none.any():
        sids, got = ptshare.share_alloc(k, task.mm, vma, PMD, bases[none])
        rows = np.flatnonzero(none)
        shared = sids != 0
        if shared.any():
            pud.entries[pud_cid, idx[rows[shared]]] = ptshare.mk_shared_entry(k, sids[shared])
            attached[rows[shared]] = got[shared]
        plain = rows[~shared]
        for r in plain.tolist():
            pud.entries[pud_cid, idx[r]] = mk_table(k.stores[PMD].new())
        account_alloc(k, task.mm, PMD, len(plain), pud_table.box)
        entries = pud.entries[pud_cid, idx]
    sid, cid = entry_tables(k, entries)
    # Windows read whole whose every page is already mapped take no fault (but the one that
    # attached a partner's table): found without looking at them one by one.
    whole = np.zeros(len(bases), dtype=bool)
    if acc.is_progression and acc.stride <= k.geom.hpage_size:
        whole = (acc.start <= bases) & (acc.end >= bases + window)
    done = np.zeros(len(bases), dtype=bool)
    if whole.any():
        rows = k.stores[PMD].entries[cid[whole]]
        mapped = (entry_tag(rows) == E_LEAF).all(axis=1)
        if write:
            mapped &= leaf_write(rows).all(axis=1)
        done[np.flatnonzero(whole)[mapped]] = True
    faults = int((done & attached).sum())
    k.events.add("fault_spurious", faults)
    span_shift = k.geom.pmd.shift
    for r in np.flatnonzero(~done).tolist():
        base = int(bases[r])
        if sid[r]:
            pmd_cid = k.shared.cow_content(int(sid[r]))
        else:
            pmd_cid = k.stores[PMD].cow(int(cid[r]))
            pud.entries[pud_cid, idx[r]] = mk_table(pmd_cid)
        sub = acc.within(base, base + window)
        faults += _fault_leaves(k, vma, pmd_cid, base, sub, write, bool(attached[r]), span_shift)
    return faults


def _fault_leaves(k: Kernel, vma: VMA, pmd_cid: int, base: int, acc: Accesses, write: bool, attached: bool,
                  shift: int) -> int:
    """hugetlb_no_page() / hugetlb_wp() for each 2 MiB page of one window, in order of first access."""
    obj = vma.obj
    frames = k.frames
    entries = k.stores[PMD].entries[pmd_cid]
    if acc.is_progression and acc.stride <= 1 << shift:
        lo, hi = acc.bounds()
        slots = np.arange((lo - base) >> shift, ((hi - 1 - base) >> shift) + 1, dtype=np.int64)
    else:
        slots, first = np.unique((acc.materialize() - base) >> shift, return_index=True)
        slots = slots[np.argsort(first)]
    e = entries[slots]
    present = entry_tag(e) == E_LEAF
    spurious = 1 if attached and present[0] else 0
    hidx = (vma.linear_page_index(base) >> 9) + slots
    new_e = e.copy()
    if vma.is_shared:
        faults = spurious + _huge_shared(k, vma, hidx, e, present, new_e, write)
    else:
        faults = spurious + _huge_private(k, vma, hidx, e, present, new_e, write)
    k.events.add("fault_hugetlb", faults - spurious)
    k.events.add("fault_spurious", spurious)
    entries[slots] = new_e
    if write:
        pfns = np.where(leaf_explicit(new_e), entry_value(new_e), obj.find(hidx))
        frames.stamp[pfns] = write_stamp(k.write_seq, base + (slots << shift))
    return faults


def _huge_shared(k: Kernel, vma: VMA, hidx: np.ndarray, e: np.ndarray, present: np.ndarray, new_e: np.ndarray,
                 write: bool) -> int:
    """A shared mapping maps the file's page (allocated into its page cache on first touch)."""
    obj = vma.obj
    faults = 0
    absent = ~present
    if absent.any():
        cached = obj.find(hidx[absent])
        need = cached == 0
        if need.any():
            pfns = k.frames.alloc(int(need.sum()), obj.page_flags, obj.initial_stamps(hidx[absent][need]))
            obj.add(hidx[absent][need], pfns)
            k.events.add("hpage_alloc", int(need.sum()))
        new_e[absent] = mk_leaf(np.full(int(absent.sum()), bool(vma.vm_flags & VM_WRITE)), None)
        faults += int(absent.sum())
    if write:
        upgrade = present & ~leaf_write(e)
        new_e[upgrade] = mk_leaf(np.ones(int(upgrade.sum()), bool), None)
        faults += int(upgrade.sum())
    return faults


def _huge_private(k: Kernel, vma: VMA, hidx: np.ndarray, e: np.ndarray, present: np.ndarray, new_e: np.ndarray,
                  write: bool) -> int:
    """A private mapping reads the file's page if the file has it, a zeroed anonymous page if not,
    and copies on write (an exclusive anonymous page is reused)."""
    frames = k.frames
    obj = vma.obj
    explicit = present & leaf_explicit(e)
    pfn = np.where(explicit, entry_value(e), 0)
    absent = ~present
    cached = np.zeros(len(e), dtype=np.int64)
    cached[absent] = obj.find(hidx[absent])
    if write:
        reuse = explicit & ~leaf_write(e) & (frames.mapcount[pfn] == 1)
        copy_anon = explicit & ~leaf_write(e) & ~reuse
        copy_file = present & ~explicit & ~leaf_write(e)
        new_pages = copy_anon | copy_file | absent
        faults = int((new_pages | reuse).sum())
        if new_pages.any():
            anon_vma_prepare(vma)
            src = np.where(copy_anon, pfn, cached)
            if copy_file.any():
                src[copy_file] = obj.find(hidx[copy_file])
            stamps = np.where(src[new_pages] > 0, frames.stamp[src[new_pages]], 0)
            got = frames.alloc(int(new_pages.sum()), PG_ANON | PG_HUGE | PG_EXCLUSIVE, stamps)
            frames.mapcount[got] = 1
            frames.mapcount[pfn[copy_anon]] -= 1
            pfn[new_pages] = got
            k.events.add("hpage_alloc", len(got))
        frames.flags[pfn[reuse]] |= PG_EXCLUSIVE
        wr = reuse | new_pages
        new_e[wr] = mk_leaf(np.ones(int(wr.sum()), bool), pfn[wr])
        return faults
    if not absent.any():
        return 0
    from_cache = absent & (cached != 0)
    new_e[from_cache] = mk_leaf(np.zeros(int(from_cache.sum()), bool), None)
    fresh = absent & (cached == 0)
    if fresh.any():
        anon_vma_prepare(vma)
        got = frames.alloc(int(fresh.sum()), PG_ANON | PG_HUGE | PG_EXCLUSIVE, 0)
        frames.mapcount[got] = 1
        new_e[fresh] = mk_leaf(np.zeros(len(got), bool), got)
        k.events.add("hpage_alloc", len(got))
    return int(absent.sum())
