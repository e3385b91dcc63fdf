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
from . import ptshare
from .frames import PG_EXCLUSIVE, ZERO_PFN
from .mm_struct import Task
from .mmap import release_object
from .pagewalk import PMD, PTE, PUD, account_alloc, pud_tables, span_slices
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
        if k.policy.share_at_fork and (k.policy.pte_shareable(vma) or k.policy.pmd_shareable(vma)):
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
    and each anonymous page gains a mapping; shared mappings are copied as they are.
    """
    cow = src.is_cow_mapping
    for pud_cid, a, b in pud_tables(k, src.mm, src.vm_start, src.vm_end, write=True):
        for dst_pud, da, db in pud_tables(k, dst.mm, a, b, alloc=True):
            _copy_pud(k, dst, src, pud_cid, dst_pud, da, db, cow)


def _copy_pud(k: Kernel, dst: VMA, src: VMA, src_pud: int, dst_pud: int, start: int, end: int, cow: bool) -> None:
    pud = k.stores[PUD]
    pmd = k.stores[PMD]
    addr = start
    while addr < end:
        nxt = k.geom.addr_end(k.geom.pud, addr, end)
        i = k.geom.index(k.geom.pud, addr)
        entry = int(pud.entries[src_pud, i])
        tag = entry_tag(entry)
        if tag == E_NONE:
            addr = nxt
            continue
        if tag == E_SHARED:
            # copy_hugetlb_page_range(): "If the pagetables are shared don't copy or take references."
            _attach_pmd(k, dst.mm, dst_pud, i, int(entry_value(entry)))
            addr = nxt
            continue
        src_pmd = pmd.cow(int(entry_value(entry)))
        pud.entries[src_pud, i] = mk_table(src_pmd)
        dst_pmd = _child_pmd(k, dst.mm, dst_pud, i)
        if src.is_hugetlb:
            _copy_huge_leaves(k, src, src_pmd, dst_pmd, addr, nxt, cow)
        else:
            _copy_pte_tables(k, dst, src, src_pmd, dst_pmd, addr, nxt, cow)
        addr = nxt


def _child_pmd(k: Kernel, mm: MM, dst_pud: int, i: int) -> int:
    pud = k.stores[PUD]
    entry = int(pud.entries[dst_pud, i])
    if entry_tag(entry) == E_NONE:
        cid = k.stores[PMD].new()
        pud.entries[dst_pud, i] = mk_table(cid)
        account_alloc(k, mm, PMD, 1)
        return cid
    cid = k.stores[PMD].cow(int(entry_value(entry)))
    pud.entries[dst_pud, i] = mk_table(cid)
    return cid


def _copy_pte_tables(k: Kernel, dst: VMA, src: VMA, src_pmd: int, dst_pmd: int, start: int, end: int,
                     cow: bool) -> None:
    """Models copy_pmd_range() -> copy_pte_range() for every PTE table of one PMD table."""
    pmd = k.stores[PMD]
    pte = k.stores[PTE]
    src_e = pmd.entries[src_pmd]
    dst_e = pmd.entries[dst_pmd]
    i0, i1, span_addrs = span_slices(k, PMD, start, end)
    tags = entry_tag(src_e[i0:i1])
    shared = np.flatnonzero(tags == E_SHARED)
    for n in shared.tolist():
        sid = int(entry_value(src_e[i0 + n]))
        ptshare.attach(k, dst.mm, PTE, np.array([sid]))
        dst_e[i0 + n] = ptshare.mk_shared_entry(k, sid)
    rows = np.flatnonzero(tags == E_TABLE)
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
        anon = pfn[bitmap_unpack(copied[framed]) & (pfn > ZERO_PFN)]
        k.frames.mapcount[anon] += 1
        k.frames.flags[anon] &= ~np.uint8(PG_EXCLUSIVE)
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


def _copy_huge_leaves(k: Kernel, src: VMA, src_pmd: int, dst_pmd: int, start: int, end: int, cow: bool) -> None:
    """Models copy_hugetlb_page_range() for one PMD table of 2 MiB leaves."""
    pmd = k.stores[PMD]
    i0, i1, _ = span_slices(k, PMD, start, end)
    src_e = pmd.entries[src_pmd, i0:i1]
    leaf = entry_tag(src_e) == E_LEAF
    if not leaf.any():
        return
    if cow:
        src_e = np.where(leaf, leaf_wrprotect(src_e), src_e)
        pmd.entries[src_pmd, i0:i1] = src_e
    explicit = leaf & leaf_explicit(src_e)
    pages = entry_value(src_e[explicit])
    k.frames.mapcount[pages] += 1
    k.frames.flags[pages] &= ~np.uint8(PG_EXCLUSIVE)
    dst_row = pmd.entries[dst_pmd, i0:i1]
    dst_row[leaf] = src_e[leaf]
    pmd.entries[dst_pmd, i0:i1] = dst_row
    k.events.add("huge_pmds_copied", int(leaf.sum()))


def _attach_pmd(k: Kernel, mm: MM, dst_pud: int, i: int, sid: int) -> None:
    pud = k.stores[PUD]
    if entry_tag(int(pud.entries[dst_pud, i])) != E_NONE:
        return
    ptshare.attach(k, mm, PMD, np.array([sid]))
    pud.entries[dst_pud, i] = ptshare.mk_shared_entry(k, sid)


# --- sharing instead of copying -------------------------------------------------------------

def share_page_range(k: Kernel, dst: VMA, src: VMA) -> None:
    """The fork step of a policy that shares tables: the child attaches the parent's shared
    tables for every span the VMA covers whole; the rest is left to faults, as lazy fork does."""
    for pud_cid, a, b in pud_tables(k, src.mm, src.vm_start, src.vm_end, write=False):
        for dst_pud, da, db in pud_tables(k, dst.mm, a, b, alloc=True):
            _share_pud(k, dst, src, pud_cid, dst_pud, da, db)


def _share_pud(k: Kernel, dst: VMA, src: VMA, src_pud: int, dst_pud: int, start: int, end: int) -> None:
    pud = k.stores[PUD]
    pmd = k.stores[PMD]
    addr = start
    while addr < end:
        nxt = k.geom.addr_end(k.geom.pud, addr, end)
        i = k.geom.index(k.geom.pud, addr)
        entry = int(pud.entries[src_pud, i])
        tag = entry_tag(entry)
        if tag == E_SHARED:
            _attach_pmd(k, dst.mm, dst_pud, i, int(entry_value(entry)))
        elif tag == E_TABLE:
            src_e = pmd.entries[int(entry_value(entry))]
            i0, i1, _ = span_slices(k, PMD, addr, nxt)
            boxes = np.flatnonzero(entry_tag(src_e[i0:i1]) == E_SHARED)
            if len(boxes):
                sids = entry_value(src_e[i0 + boxes])
                ptshare.attach(k, dst.mm, PTE, sids)
                if entry_tag(int(pud.entries[dst_pud, i])) == E_NONE:
                    # The child's PMD table here holds only what it attaches: often exactly the
                    # parent's table, whose storage it then shares.
                    row = np.zeros(PTRS_PER_TABLE, dtype=np.int64)
                    row[i0 + boxes] = src_e[i0 + boxes]
                    pud.entries[dst_pud, i] = mk_table(pmd.adopt(row))
                    account_alloc(k, dst.mm, PMD, 1)
                else:
                    dst_pmd = _child_pmd(k, dst.mm, dst_pud, i)
                    pmd.entries[dst_pmd, i0 + boxes] = ptshare.mk_shared_entry(k, sids)
        addr = nxt


# --- exit and exec ----------------------------------------------------------------------------

def exit_mmap(k: Kernel, mm: MM) -> None:
    """Models exit_mmap(): zap every VMA, free every page table, drop the VMAs."""
    k.events.add("exit")
    vmas = list(mm.vmas)
    for vma in vmas:
        zap_page_range(k, mm, vma.vm_start, vma.vm_end)
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
