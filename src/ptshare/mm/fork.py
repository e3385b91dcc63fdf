"""fork, exec and exit: models ``dup_mmap()``/``copy_page_range()`` (kernel/fork.c, mm/memory.c),
``exit_mmap()`` (mm/mmap.c) and the mm switch of ``exec``.

Which VMAs fork copies page tables for is the policy's ``vma_needs_copy``.  A policy that shares
tables replaces the step that would copy a table: :func:`share_page_range` attaches the parent's
shared tables to the child instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..arch import (
    E_LEAF,
    E_NONE,
    E_SHARED,
    E_TABLE,
    MASK_BYTES,
    PAGE_SHIFT,
    PTRS_PER_TABLE,
    bitmap_pack,
    bitmap_unpack,
    bitmap_weight,
    entry_tag,
    entry_value,
    leaf_explicit,
    leaf_wrprotect,
    mk_table,
    range_bits,
)
from . import asyncfork, ptshare
from .frames import PG_EXCLUSIVE, ZERO_PFN, scattered
from .huge_memory import copy_huge_pmds, pmd_trans_huge
from .mm_struct import Task
from .mmap import release_object
from .pagewalk import PMD, PTE, PUD, Shared, Table, account_alloc, dir_of, span_slices, walk, walk_below
from .rmap import anon_vma_fork
from .unmap import free_pgtables, zap_page_range
from .vma import VM_DONTCOPY, VM_WIPEONFORK, VMA

if TYPE_CHECKING:
    from .kernel import Kernel
    from .mm_struct import MM


def dup_mmap(k: Kernel, parent: Task, name: str) -> Task:
    """fork(): a child with a copy of the parent's VMAs and, per the policy, of its page tables."""
    k.events.add("fork")
    mm = k.new_mm(parent.mm.mmap_base)
    for vma in parent.mm.vmas:
        if vma.vm_flags & VM_DONTCOPY:
            continue
        wipe = bool(vma.vm_flags & VM_WIPEONFORK)
        child = VMA(mm=mm, vm_start=vma.vm_start, vm_end=vma.vm_end, vm_flags=vma.vm_flags,
                    vm_pgoff=vma.vm_pgoff, obj=vma.obj)
        if not wipe:
            anon_vma_fork(child, vma)
        mm.insert_vma(child)
        k.events.add("vmas_copied")
        if wipe:
            continue
        if k.policy.share_at_fork(vma):
            share_page_range(k, child, vma)
        elif k.policy.vma_needs_copy(vma):
            copy_page_range(k, child, vma)
        else:
            k.events.add("vmas_skipped")
    task = Task(pid=k.new_pid(), name=name, mm=mm, parent=parent)
    k.tasks.append(task)
    return task


# --- copying ----------------------------------------------------------------------------------

def copy_page_range(k: Kernel, dst: VMA, src: VMA) -> None:
    """Models copy_page_range(): copy the parent's entries for ``src`` into the child's tables.

    For a copy-on-write mapping, writable entries are write-protected in parent and child alike
    and each anonymous page gains a mapping; shared mappings are copied as they are.  A shared
    table is attached, not copied (copy_hugetlb_page_range(): "If the pagetables are shared don't
    copy or take references").
    """
    for src_pud in walk(k, src.mm, src.vm_start, src.vm_end, PUD, how=Shared.YIELD):
        if src_pud.sid:
            attach_table(k, dst.mm, src_pud)
            continue
        dir_of(k, dst.mm, PMD, src_pud.start)  # pud_alloc(): wherever the parent has a PUD table
        if k.policy.copy_lower_levels_async(src):
            asyncfork.copy_pud_range_async(k, dst, src, src_pud, copy_pud_range)
        else:
            copy_pud_range(k, dst, src, src_pud)


def copy_pud_range(k: Kernel, dst: VMA, src: VMA, src_pud: Table) -> None:
    """Models copy_pud_range(): for each PMD table of the parent's PUD table, the child's (pmd_alloc)."""
    cow = src.is_cow_mapping
    for src_pmd in walk_below(k, src.mm, src_pud, PMD, how=Shared.YIELD):
        if src_pmd.sid:
            attach_table(k, dst.mm, src_pmd)
            continue
        dst_pmd = dir_of(k, dst.mm, PTE, src_pmd.start)
        if src.is_hugetlb:
            copy_hugetlb_page_range(k, src, src_pmd, dst_pmd, cow)
        else:
            copy_pmd_range(k, dst, src, src_pmd, dst_pmd, cow)


def attach_table(k: Kernel, mm: MM, table: Table) -> None:
    """``mm`` attaches the shared table ``table`` (another mm's) at the same place, unless it has
    a table there already."""
    up = dir_of(k, mm, table.lvl, table.start)
    i = k.geom.index(k.geom.levels[table.lvl + 1], table.start)
    if entry_tag(int(k.stores[table.lvl + 1].entries[up.cid, i])) != E_NONE:
        return
    ptshare.attach(k, mm, table.lvl, np.array([table.sid]))
    k.stores[table.lvl + 1].entries[up.cid, i] = ptshare.mk_shared_entry(k, table.sid)


def copy_pmd_range(k: Kernel, dst: VMA, src: VMA, src_pmd: Table, dst_pmd: Table, cow: bool) -> None:
    """Models copy_pmd_range() -> copy_pte_range() for every PTE table of one PMD table.

    Shared PTE tables are attached; where the policy shares PTE tables copy-on-write
    (:meth:`Policy.cow_pte_tables`), each table the VMA covers whole is shared with the child
    instead of copied (:func:`cow_pmd_range`); the others are copied.
    """
    start, end = src_pmd.start, src_pmd.end
    pmd = k.stores[PMD]
    pte = k.stores[PTE]
    src_e = pmd.entries[src_pmd.cid]
    dst_e = pmd.entries[dst_pmd.cid]
    i0, i1, span_addrs = span_slices(k, PMD, start, end)
    huge = i0 + np.flatnonzero(pmd_trans_huge(k, src_e[i0:i1]))
    if len(huge):
        src_e[huge] = dst_e[huge] = copy_huge_pmds(k, dst.mm, src_e[huge], cow)
        if cow:
            k.flush_tlb_mm(src.mm)
    tags = entry_tag(src_e[i0:i1])
    shared = np.flatnonzero(tags == E_SHARED)
    if len(shared):
        sids = entry_value(src_e[i0 + shared])
        ptshare.attach(k, dst.mm, PTE, sids)
        dst_e[i0 + shared] = ptshare.mk_shared_entry(k, sids)
    rows = np.flatnonzero(tags == E_TABLE)
    if len(rows) and k.policy.cow_pte_tables(src):
        rows = cow_pmd_range(k, dst, src, src_e, dst_e, i0 + rows, span_addrs[rows]) - i0
    if len(rows) == 0:
        return
    idx = i0 + rows
    cids = entry_value(src_e[idx])
    lo = np.clip((start - span_addrs[rows]) >> PAGE_SHIFT, 0, PTRS_PER_TABLE)
    hi = np.clip((end - span_addrs[rows]) >> PAGE_SHIFT, 0, PTRS_PER_TABLE)
    whole = (lo == 0) & (hi == PTRS_PER_TABLE)
    # Packed masks throughout: a fork copies whole tables far more often than it looks at an entry.
    in_range = np.full((len(rows), MASK_BYTES), 0xFF, dtype=np.uint8)
    if not whole.all():
        in_range[~whole] = bitmap_pack(range_bits(lo[~whole], hi[~whole]))
    present = pte.present[cids]
    write = pte.write[cids]
    copied = present & in_range
    if cow:
        wrprotect = write & copied
        touched = wrprotect.any(axis=1)
        if touched.any():
            write &= ~wrprotect
            new = pte.cow(cids[touched])
            pte.store_packed(new, present[touched], write[touched])
            src_e[idx[touched]] = mk_table(new)
            cids = cids.copy()
            cids[touched] = new
            k.flush_tlb_mm(src.mm)
    framed = np.flatnonzero(pte.row[cids] > 0)  # tables with explicit frames: anonymous or private copies
    if len(framed):
        pfn = pte.pfn[pte.row[cids[framed]]]
        mapped = bitmap_unpack(copied[framed]) & (pfn > ZERO_PFN)
        anon = pfn[mapped]
        k.frames.mapcount[anon] += 1
        k.frames.flags[anon] &= ~np.uint8(PG_EXCLUSIVE)
        k.events.add("ptes_copied_scattered", scattered(pfn, mapped))
    k.events.add("ptes_copied", int(bitmap_weight(copied).sum()))
    dst_tags = entry_tag(dst_e[idx])
    fresh = dst_tags == E_NONE
    # A table the VMA covers whole is copied as a value: the child's table holds what the
    # (write-protected) parent's holds, so the two share storage until one of them changes.
    same = fresh & whole
    if src.is_shared:  # copy_present_pte(): a shared mapping's child PTEs are clean
        same &= ~pte.has_wp_dirty(cids)
    if same.any():
        pte.get(cids[same])
        dst_e[idx[same]] = mk_table(cids[same])
    rest = np.flatnonzero(~same)
    if len(rest):
        src_p, src_w, src_f = pte.load(cids[rest])
        mask = bitmap_unpack(copied[rest])
        keep_p = np.zeros((len(rest), PTRS_PER_TABLE), bool)
        keep_w = np.zeros_like(keep_p)
        keep_f = np.zeros((len(rest), PTRS_PER_TABLE), dtype=np.int64)
        old = ~fresh[rest]
        if old.any():
            keep_p[old], keep_w[old], keep_f[old] = pte.load(entry_value(dst_e[idx[rest][old]]))
        keep_p |= mask
        keep_w = np.where(mask, src_w & src_p, keep_w)
        keep_f = np.where(mask, src_f, keep_f)
        new_ids = pte.new(keep_p[~old], keep_w[~old], keep_f[~old]) if (~old).any() else None
        if new_ids is not None:
            dst_e[idx[rest][~old]] = mk_table(new_ids)
        if old.any():
            ids = pte.cow(entry_value(dst_e[idx[rest][old]]))
            pte.store(ids, keep_p[old], keep_w[old], keep_f[old])
            dst_e[idx[rest][old]] = mk_table(ids)
    n_new = int(fresh.sum())
    account_alloc(k, dst.mm, PTE, n_new)
    k.events.add("pte_tables_copied", n_new)


def cow_pmd_range(k: Kernel, dst: VMA, src: VMA, src_e: np.ndarray, dst_e: np.ndarray, idx: np.ndarray,
                  span_addrs: np.ndarray) -> np.ndarray:
    """Share the PTE tables at entries ``idx`` of the parent's PMD table (row ``src_e``) with the
    child copy-on-write, where the VMA covers their span whole and the child has no table there:
    both entries point at one table, unshared by copying at the first change (the parent's entries
    stop allowing writes through them, so its TLB is flushed).  Returns the entries left to copy."""
    whole = (span_addrs >= src.vm_start) & (span_addrs + k.geom.pte.span <= src.vm_end)
    whole &= entry_tag(dst_e[idx]) == E_NONE
    if not whole.any():
        return idx
    at = idx[whole]
    sids = ptshare.cow_share(k, src.mm, dst.mm, entry_value(src_e[at]))
    src_e[at] = ptshare.mk_shared_entry(k, sids)
    dst_e[at] = ptshare.mk_shared_entry(k, sids)
    k.flush_tlb_mm(src.mm)
    return idx[~whole]


def copy_hugetlb_page_range(k: Kernel, src: VMA, src_pmd: Table, dst_pmd: Table, cow: bool) -> None:
    """Models copy_hugetlb_page_range() for one PMD table of 2 MiB leaves."""
    pmd = k.stores[PMD]
    i0, i1, _ = span_slices(k, PMD, src_pmd.start, src_pmd.end)
    src_cid, dst_cid = src_pmd.cid, dst_pmd.cid
    src_e = pmd.entries[src_cid, i0:i1]
    leaf = entry_tag(src_e) == E_LEAF
    if not leaf.any():
        return
    if cow:
        src_e = np.where(leaf, leaf_wrprotect(src_e), src_e)
        pmd.entries[src_cid, i0:i1] = src_e
    explicit = leaf & leaf_explicit(src_e)
    pages = entry_value(src_e[explicit])
    k.frames.mapcount[pages] += 1
    k.frames.flags[pages] &= ~np.uint8(PG_EXCLUSIVE)
    dst_row = pmd.entries[dst_cid, i0:i1]
    dst_row[leaf] = src_e[leaf]
    pmd.entries[dst_cid, i0:i1] = dst_row
    k.events.add("huge_pmds_copied", int(leaf.sum()))


# --- sharing instead of copying -------------------------------------------------------------

def share_page_range(k: Kernel, dst: VMA, src: VMA) -> None:
    """The fork step of a policy that shares tables: the child attaches the parent's shared
    tables for every span the VMA covers whole; the rest is left to faults, as lazy fork does."""
    for src_pud in walk(k, src.mm, src.vm_start, src.vm_end, PUD, write=False, how=Shared.YIELD):
        if src_pud.sid:
            attach_table(k, dst.mm, src_pud)
            continue
        dir_of(k, dst.mm, PMD, src_pud.start)
        share_pud_range(k, dst, src, src_pud)


def share_pud_range(k: Kernel, dst: VMA, src: VMA, src_pud: Table) -> None:
    """:func:`share_page_range` for one of the parent's PUD tables."""
    pmd = k.stores[PMD]
    for src_pmd in walk_below(k, src.mm, src_pud, PMD, write=False, how=Shared.YIELD):
        if src_pmd.sid:
            attach_table(k, dst.mm, src_pmd)
            continue
        src_e = pmd.entries[src_pmd.cid]
        i0, i1, _ = span_slices(k, PMD, src_pmd.start, src_pmd.end)
        boxes = np.flatnonzero(entry_tag(src_e[i0:i1]) == E_SHARED)
        if not len(boxes):
            continue
        sids = entry_value(src_e[i0 + boxes])
        ptshare.attach(k, dst.mm, PTE, sids)
        up = dir_of(k, dst.mm, PMD, src_pmd.start)
        i = k.geom.index(k.geom.pud, src_pmd.start)
        if entry_tag(int(k.stores[PUD].entries[up.cid, i])) == E_NONE:
            # The child's PMD table here holds only what it attaches: often exactly the
            # parent's table, whose storage it then shares.
            row = np.zeros(PTRS_PER_TABLE, dtype=np.int64)
            row[i0 + boxes] = src_e[i0 + boxes]
            k.stores[PUD].entries[up.cid, i] = mk_table(pmd.adopt(row))
            account_alloc(k, dst.mm, PMD, 1, up.box)
        else:
            dst_pmd = dir_of(k, dst.mm, PTE, src_pmd.start)
            pmd.entries[dst_pmd.cid, i0 + boxes] = ptshare.mk_shared_entry(k, sids)


# --- exit and exec ----------------------------------------------------------------------------

def exit_mmap(k: Kernel, mm: MM) -> None:
    """Models exit_mmap(): zap every VMA, free every page table, drop the VMAs."""
    k.events.add("exit")
    vmas = list(mm.vmas)
    for vma in vmas:
        zap_page_range(k, mm, vma.vm_start, vma.vm_end, fullmm=True)
    free_pgtables(k, mm, [(v.vm_start, v.vm_end) for v in vmas], 0, 0)
    for vma in vmas:
        mm.remove_vma(vma)
        release_object(k, vma.obj)
    k.events.add("vmas_freed", len(vmas))
    k.free_mm(mm)


def do_exit(k: Kernel, task: Task, killed_by: str | None = None) -> None:
    exit_mmap(k, task.mm)
    task.alive = False
    task.killed_by = killed_by


def do_exec(k: Kernel, task: Task, mmap_base: int) -> None:
    """exec(): a fresh mm replaces the old one, which is torn down as at exit."""
    k.events.add("exec")
    old = task.mm
    task.mm = k.new_mm(mmap_base)
    exit_mmap(k, old)
