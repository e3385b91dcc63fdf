"""mprotect and madvise: models mm/mprotect.c (``mprotect_fixup``, ``change_protection``),
``madvise_dontneed_single_vma`` and ``hugepage_madvise`` (mm/madvise.c, mm/khugepaged.c)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..arch import (
    E_LEAF,
    E_SHARED,
    E_TABLE,
    PAGE_SHIFT,
    PAGE_SIZE,
    PTRS_PER_TABLE,
    bitmap_pack,
    entry_tag,
    entry_value,
    leaf_explicit,
    leaf_mkwrite,
    leaf_wrprotect,
    mk_table,
    range_bits,
)
from ..errors import MmError
from .frames import PG_ANON, PG_EXCLUSIVE
from .mmap import split_vma, unshare_range, vma_merge
from .pagewalk import PMD, PTE, Table, entry_tables, span_slices, walk
from .unmap import reclaim_pte_tables, zap_page_range
from .vma import (
    VM_ACCESS_FLAGS,
    VM_ACCOUNT,
    VM_HUGEPAGE,
    VM_LOCKED,
    VM_NOHUGEPAGE,
    VM_SHARED,
    VM_SPECIAL,
    VM_WRITE,
    VMA,
)

if TYPE_CHECKING:
    from .kernel import Kernel
    from .mm_struct import MM


def _covering(k: Kernel, mm: MM, start: int, end: int, what: str) -> list[VMA]:
    if start % PAGE_SIZE:
        raise MmError("EINVAL", f"{what} address {start:#x} is not page-aligned")
    vmas = mm.vmas_between(start, end)
    addr = start
    for vma in vmas:
        if vma.vm_start > addr:
            break
        addr = vma.vm_end
    if addr < end:
        raise MmError("ENOMEM", f"{what} range {start:#x}-{end:#x} is not all mapped (hole at {addr:#x})")
    for vma in vmas:
        if vma.is_hugetlb and (start % k.geom.hpage_size or end % k.geom.hpage_size):
            raise MmError("EINVAL", f"{what} of a hugetlb mapping must be 2 MiB-aligned")
    return vmas


def do_mprotect(k: Kernel, mm: MM, start: int, length: int, prot_flags: int) -> None:
    """Models do_mprotect_pkey(): split the VMAs at the ends, change flags and PTEs, merge back."""
    end = start + -(-length // PAGE_SIZE) * PAGE_SIZE
    vmas = _covering(k, mm, start, end, "mprotect")
    if any(vma.obj is not None and vma.obj.is_mshare for vma in vmas):  # mshare_vm_op_mprotect()
        raise MmError("EINVAL", "mprotect of an mshare region is refused (its mappings are changed for every "
                      "process through the region's file)")
    for vma in vmas:
        newflags = (vma.vm_flags & ~VM_ACCESS_FLAGS) | prot_flags
        if newflags != vma.vm_flags:
            mprotect_fixup(k, mm, _split_to(k, mm, vma, start, end), newflags)


def _split_to(k: Kernel, mm: MM, vma: VMA, start: int, end: int) -> VMA:
    """The part of ``vma`` inside [start, end), split off at either end as needed."""
    if vma.vm_start < start:
        vma = split_vma(k, mm, vma, start)
    if vma.vm_end > end:
        split_vma(k, mm, vma, end)
    return vma


def mprotect_fixup(k: Kernel, mm: MM, vma: VMA, newflags: int) -> None:
    unshare_range(k, mm, vma.vm_start, vma.vm_end)
    if newflags & VM_WRITE and not vma.vm_flags & (VM_ACCOUNT | VM_WRITE | VM_SHARED) and not vma.is_hugetlb:
        newflags |= VM_ACCOUNT  # private memory becoming writable is committed, and stays so
    vma.vm_flags = newflags
    change_protection(k, mm, vma)
    vma_merge(k, mm, vma)
    k.flush_tlb_mm(mm)


def change_protection(k: Kernel, mm: MM, vma: VMA) -> None:
    """Models change_protection() for the whole of ``vma`` after its flags changed.

    Write permission is removed from every present entry.  It is granted where Linux 6.x grants
    it without a fault (``can_change_pte_writable()``): every entry of a shared mapping whose
    object does not track dirtying; the dirty entries of a shared mapping whose object does (a
    disk file: its writable entries are dirty, and stay dirty while write-protected); and, in a
    private writable mapping, entries mapping an anonymous page no other mapping shares.
    Everything else gains write access at the next fault.
    """
    for pmd in walk(k, mm, vma.vm_start, vma.vm_end, PMD):
        change_pmd_range(k, vma, pmd)


def change_pmd_range(k: Kernel, vma: VMA, pmd: Table) -> None:
    """Models change_pmd_range() -> change_pte_range() for every PTE table (or huge leaf) under one
    PMD table."""
    frames = k.frames
    entries = k.stores[PMD].entries[pmd.cid]
    i0, i1, span_addrs = span_slices(k, PMD, pmd.start, pmd.end)
    e = entries[i0:i1]
    tag = entry_tag(e)
    grant_shared = vma.pte_writable()
    grant_private = bool(vma.vm_flags & VM_WRITE) and not vma.is_shared
    leaf = tag == E_LEAF
    if leaf.any():
        if vma.is_shared and vma.vm_flags & VM_WRITE:
            e = np.where(leaf, leaf_mkwrite(e), e)
        elif grant_private:
            pages = np.where(leaf & leaf_explicit(e), entry_value(e), 0)
            exclusive = (frames.flags[pages] & PG_EXCLUSIVE) != 0
            e = np.where(leaf & exclusive & (pages > 0), leaf_mkwrite(e), leaf_wrprotect(e))
        else:
            e = leaf_wrprotect(e)
        entries[i0:i1] = e
        k.events.add("ptes_changed", int(leaf.sum()))
    rows = np.flatnonzero((tag == E_TABLE) | (tag == E_SHARED))
    if len(rows) == 0:
        return
    pte = k.stores[PTE]
    sids, cids = entry_tables(k, e[rows])
    present, write, pfn = pte.load(cids)
    lo = np.clip((vma.vm_start - span_addrs[rows]) >> PAGE_SHIFT, 0, PTRS_PER_TABLE)
    hi = np.clip((vma.vm_end - span_addrs[rows]) >> PAGE_SHIFT, 0, PTRS_PER_TABLE)
    mask = range_bits(lo, hi) & present
    if grant_shared:
        grant = mask
    elif grant_private:
        grant = mask & (pfn > 0) & ((frames.flags[pfn] & (PG_ANON | PG_EXCLUSIVE)) == (PG_ANON | PG_EXCLUSIVE))
    elif vma.wants_writenotify and vma.vm_flags & VM_WRITE:
        grant = mask & pte.wp_dirty_of(cids)
    else:
        grant = np.zeros_like(mask)
    new_write = np.where(mask, grant, write)
    # change_pte_range() rewrites every present entry of the range (ptep_modify_prot_start/commit),
    # whether or not its write bit changes; only the contents of the changed tables differ here.
    k.events.add("ptes_changed", int(np.count_nonzero(mask)))
    changed = (new_write != write).any(axis=1)
    if not changed.any():
        return
    for n in np.flatnonzero(changed).tolist():
        if sids[n]:
            cid = k.shared.cow_content(int(sids[n]))
        else:
            (cid,) = pte.cow(np.array([cids[n]]))
            entries[i0 + rows[n]] = mk_table(cid)
        pte.store(np.array([cid]), present[n:n + 1], new_write[n:n + 1], pfn[n:n + 1])
        if vma.wants_writenotify:  # write-protected entries keep their dirty bit
            pte.mark_wp_dirty(cid, bitmap_pack(write[n:n + 1] & ~new_write[n:n + 1])[0])


def do_madvise_dontneed(k: Kernel, mm: MM, start: int, length: int) -> None:
    """MADV_DONTNEED: drop the pages of the range.  Page tables stay, except the PTE tables of
    2 MiB spans that one VMA's part of the range covers whole: Linux 6.15+ frees those
    (``madvise_dontneed_single_vma`` zaps with ``reclaim_pt``; see :func:`reclaim_pte_tables`)."""
    end = start + -(-length // PAGE_SIZE) * PAGE_SIZE
    vmas = _covering(k, mm, start, end, "madvise")
    for vma in vmas:
        if vma.vm_flags & VM_LOCKED:
            raise MmError("EINVAL", "MADV_DONTNEED on a locked mapping")
    unshare_range(k, mm, start, end)
    zap_page_range(k, mm, start, end)
    for vma in vmas:
        if not vma.is_hugetlb:  # hugetlb zaps do not go through zap_pte_range()
            reclaim_pte_tables(k, mm, max(start, vma.vm_start), min(end, vma.vm_end))


def do_madvise_hugepage(k: Kernel, mm: MM, start: int, length: int, huge: bool) -> None:
    """MADV_HUGEPAGE / MADV_NOHUGEPAGE: models hugepage_madvise() through madvise_update_vma() --
    set VM_HUGEPAGE (or VM_NOHUGEPAGE) on the range, splitting VMAs at its ends and merging after.
    Huge PMDs already mapped stay (khugepaged, which MADV_HUGEPAGE registers the mm with, is not
    modelled); hugetlb and special mappings are left as they are."""
    end = start + -(-length // PAGE_SIZE) * PAGE_SIZE
    for vma in _covering(k, mm, start, end, "madvise"):
        if vma.is_hugetlb or vma.vm_flags & VM_SPECIAL:
            continue
        newflags = (vma.vm_flags & ~(VM_HUGEPAGE | VM_NOHUGEPAGE)) | (VM_HUGEPAGE if huge else VM_NOHUGEPAGE)
        if newflags != vma.vm_flags:
            vma = _split_to(k, mm, vma, start, end)
            vma.vm_flags = newflags
            vma_merge(k, mm, vma)
