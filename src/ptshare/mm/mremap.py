"""mremap: models mm/mremap.c (``move_vma``, ``move_page_tables``, ``vma_expand``).

Entries move with their pages (``move_ptes``): anonymous pages keep their mappings, file entries
keep mapping the same file pages since the VMA keeps its ``vm_pgoff``.  Tables at the source are
freed with the old range, as ``free_pgtables`` frees them; the destination allocates what it
needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..arch import (
    E_LEAF,
    E_NONE,
    E_TABLE,
    PAGE_SHIFT,
    PAGE_SIZE,
    PTRS_PER_TABLE,
    bitmap_pack,
    entry_tag,
    mk_table,
)
from ..errors import MmError
from .huge_memory import move_huge_pmds
from .mmap import (
    MMAP_MIN_ADDR,
    get_unmapped_area,
    split_vma,
    unmap_region,
    unshare_range,
    vma_merge,
    vma_merge_extend,
)
from .pagewalk import PMD, PTE, Table, account_alloc, dir_of, walk
from .translate import lookup
from .vma import VMA

if TYPE_CHECKING:
    from .kernel import Kernel
    from .mm_struct import MM


def do_mremap(k: Kernel, mm: MM, addr: int, old_size: int, new_size: int, new_addr: int | None) -> int:
    """Resize or move the mapping at ``addr``; returns its new address.

    With ``new_addr`` this is MREMAP_MAYMOVE|MREMAP_FIXED; without, the mapping shrinks or grows
    in place where it can and moves (MREMAP_MAYMOVE) where it cannot.
    """
    if addr % PAGE_SIZE or (new_addr is not None and new_addr % PAGE_SIZE):
        raise MmError("EINVAL", "mremap addresses must be page-aligned")
    old_size = -(-old_size // PAGE_SIZE) * PAGE_SIZE
    new_size = -(-new_size // PAGE_SIZE) * PAGE_SIZE
    if new_size == 0:
        raise MmError("EINVAL", "mremap to size 0")
    if new_addr is not None and (new_size > mm.task_size or new_addr > mm.task_size - new_size
                                 or new_addr < MMAP_MIN_ADDR):  # mremap_to(), and mmap_min_addr
        raise MmError("EINVAL", f"mremap destination {new_addr:#x}+{new_size:#x} is not inside the user address "
                      f"space [{MMAP_MIN_ADDR:#x}, {mm.task_size:#x})")
    vma = mm.vma_lookup(addr)
    if vma is None or addr + old_size > vma.vm_end:
        raise MmError("EFAULT", f"mremap range {addr:#x}+{old_size:#x} is not inside one mapping")
    if vma.obj is not None and vma.obj.is_mshare:
        raise MmError("EINVAL", "mremap of an mshare region is refused (its VMA cannot be split or moved)")
    if vma.is_hugetlb:
        hp = k.geom.hpage_size
        if addr % hp or old_size % hp or new_size % hp or (new_addr is not None and new_addr % hp):
            raise MmError("EINVAL", "mremap of a hugetlb mapping must be 2 MiB-aligned")
    if new_addr is None:
        if new_size <= old_size:
            if new_size < old_size:
                from .mmap import do_munmap

                do_munmap(k, mm, addr + new_size, old_size - new_size)
            return addr
        if addr + old_size == vma.vm_end and addr + new_size <= mm.task_size \
                and not mm.vmas_between(vma.vm_end, addr + new_size):  # vma_expandable()
            vma_merge_extend(k, mm, vma, new_size - old_size)
            return addr
    return move_vma(k, mm, vma, addr, old_size, new_size, new_addr)


def move_vma(k: Kernel, mm: MM, vma: VMA, addr: int, old_size: int, new_size: int,
             new_addr: int | None) -> int:
    if vma.vm_start < addr:
        vma = split_vma(k, mm, vma, addr)
    if vma.vm_end > addr + old_size:
        split_vma(k, mm, vma, addr + old_size)
    pgoff = vma.vm_pgoff
    if new_addr is None:
        new_addr = get_unmapped_area(k, mm, 0, new_size, pgoff, vma.obj, vma.is_shared)
    else:
        if new_addr < addr + old_size and addr < new_addr + new_size:
            raise MmError("EINVAL", "mremap source and destination overlap")
        from .mmap import do_munmap

        do_munmap(k, mm, new_addr, new_size)
    unshare_range(k, mm, addr, addr + old_size)
    moved = min(old_size, new_size)
    if vma.is_anonymous and vma.anon_vma is None:
        pgoff = new_addr >> PAGE_SHIFT  # copy_vma(): no page depends on the offset, so make it mergeable there
    new = VMA(mm=mm, vm_start=new_addr, vm_end=new_addr + new_size, vm_flags=vma.vm_flags, vm_pgoff=pgoff,
              obj=vma.obj, anon_vma=vma.anon_vma, anon_vma_chain=vma.anon_vma_chain)
    mm.insert_vma(new)
    move_page_tables(k, mm, vma, addr, new, new_addr, moved)
    if old_size > new_size:
        from .unmap import zap_page_range

        zap_page_range(k, mm, addr + new_size, addr + old_size)
    unmap_region(k, mm, [vma])
    vma_merge(k, mm, new)
    return new_addr


def move_page_tables(k: Kernel, mm: MM, old: VMA, old_addr: int, new: VMA, new_addr: int, length: int) -> None:
    """Move every present entry of [old_addr, old_addr + length) to the same offset at ``new_addr``.

    Linux walks the range in chunks that end at a table boundary on either side, and gives the
    destination a table for every chunk whose source has one, whether or not any entry in it is
    present (``alloc_new_pud``, ``alloc_new_pmd``, ``pte_alloc``); :func:`_alloc_like_source` does
    that first, then the entries are moved.
    """
    if old.is_hugetlb:
        step = k.geom.hpage_size
        addrs = np.arange(old_addr, old_addr + length, step, dtype=np.int64)
    else:
        # huge PMDs move whole first (move_huge_pmd); the PTE tables left get destinations as the
        # kernel allocates them
        move_huge_pmds(k, mm, old_addr, new_addr, length, lambda at, leaves: _install_leaves(k, mm, at, leaves))
        _alloc_like_source(k, mm, old_addr, new_addr, length)
        addrs = np.arange(old_addr, old_addr + length, PAGE_SIZE, dtype=np.int64)
    dirty = np.zeros(len(addrs), dtype=bool)
    present, write, pfn = lookup(k, mm, addrs, wp_dirty=dirty)
    if not present.any():
        return
    src = addrs[present]
    dst = src - old_addr + new_addr
    _install(k, mm, new, dst, write[present], pfn[present], dirty[present])
    _clear(k, mm, src)
    k.events.add("ptes_moved", len(src))
    k.flush_tlb_mm(mm)


def _alloc_like_source(k: Kernel, mm: MM, old_addr: int, new_addr: int, length: int) -> None:
    """The destination tables of move_page_tables(): for every source span of [old_addr, +length)
    that has a PMD table (a present PUD entry), a PUD table over its destination; for every span
    that has a PTE table (a present PMD entry), a PMD table and a PTE table over its destination.
    A source PTE table moved whole (a chunk of exactly 2 MiB) is one allocated here and one freed
    with the old range, which is what the counts see."""
    delta = new_addr - old_addr
    end = old_addr + length
    pte_span = k.geom.pte.span  # the span of a PMD entry
    with_pte: list[np.ndarray] = []
    for pmd in list(walk(k, mm, old_addr, end, PMD, write=False)):  # get_old_pud(): alloc_new_pud()
        for _ in walk(k, mm, pmd.start + delta, pmd.end + delta, PMD + 1, alloc=True):
            pass
        base = pmd.start & ~(k.geom.pmd.span - 1)
        spans = base + np.arange(PTRS_PER_TABLE, dtype=np.int64) * pte_span
        keep = (entry_tag(k.stores[PMD].entries[pmd.cid]) != E_NONE) & (spans + pte_span > pmd.start) \
            & (spans < pmd.end)
        with_pte.append(spans[keep])
    if not with_pte:
        return
    spans = np.concatenate(with_pte)
    first = np.maximum(spans, old_addr) + delta
    last = np.minimum(spans + pte_span, end) + delta - 1
    dest = np.unique(np.concatenate([first, last]) & ~(pte_span - 1))
    pmd_shift = k.geom.pmd.span.bit_length() - 1
    for key in np.unique(dest >> pmd_shift).tolist():
        here = dest[(dest >> pmd_shift) == key]
        pmd = dir_of(k, mm, PTE, key << pmd_shift)  # get_old_pmd(): alloc_new_pmd(), then pte_alloc()
        entries = k.stores[PMD].entries[pmd.cid]
        slot = (here >> (pte_span.bit_length() - 1)) & (PTRS_PER_TABLE - 1)
        none = slot[entry_tag(entries[slot]) == E_NONE]
        if len(none):
            ids = k.stores[PTE].new(np.zeros((len(none), PTRS_PER_TABLE), bool),
                                    np.zeros((len(none), PTRS_PER_TABLE), bool), None)
            entries[none] = mk_table(ids)
            account_alloc(k, mm, PTE, len(none), pmd.box)


def _install(k: Kernel, mm: MM, vma: VMA, addrs: np.ndarray, write: np.ndarray, pfn: np.ndarray,
             dirty: np.ndarray) -> None:
    from ..arch import mk_leaf

    pmd_shift = k.geom.pmd.span.bit_length() - 1
    span_shift = k.geom.pte.span.bit_length() - 1
    for key in np.unique(addrs >> pmd_shift).tolist():
        in_pmd = (addrs >> pmd_shift) == key
        pmd = dir_of(k, mm, PTE, key << pmd_shift)  # pmd_alloc()
        entries = k.stores[PMD].entries[pmd.cid]
        slot = (addrs[in_pmd] >> span_shift) & (PTRS_PER_TABLE - 1)
        if vma.is_hugetlb:
            entries[slot] = mk_leaf(write[in_pmd], pfn[in_pmd])
            continue
        _install_ptes(k, mm, pmd, entries, slot, addrs[in_pmd], write[in_pmd], pfn[in_pmd], dirty[in_pmd])


def _install_leaves(k: Kernel, mm: MM, addrs: np.ndarray, leaves: np.ndarray) -> None:
    """Place huge PMD leaves (moved whole) at ``addrs``, allocating the tables above them."""
    pmd_shift = k.geom.pmd.span.bit_length() - 1
    span_shift = k.geom.pte.span.bit_length() - 1
    for key in np.unique(addrs >> pmd_shift).tolist():
        here = (addrs >> pmd_shift) == key
        pmd = dir_of(k, mm, PTE, key << pmd_shift)  # pmd_alloc()
        k.stores[PMD].entries[pmd.cid, (addrs[here] >> span_shift) & (PTRS_PER_TABLE - 1)] = leaves[here]


def _install_ptes(k: Kernel, mm: MM, pmd: Table, entries: np.ndarray, slot: np.ndarray, addrs: np.ndarray,
                  write: np.ndarray, pfn: np.ndarray, dirty: np.ndarray) -> None:
    from ..arch import entry_value

    pte = k.stores[PTE]
    spans, inv = np.unique(slot, return_inverse=True)
    tags = entry_tag(entries[spans])
    none = tags == E_NONE
    if none.any():
        ids = pte.new(np.zeros((int(none.sum()), PTRS_PER_TABLE), bool),
                      np.zeros((int(none.sum()), PTRS_PER_TABLE), bool), None)
        entries[spans[none]] = mk_table(ids)
        account_alloc(k, mm, PTE, int(none.sum()), pmd.box)
    cids = pte.cow(entry_value(entries[spans]))
    entries[spans] = mk_table(cids)
    present, w, f = pte.load(cids)
    ent = (addrs >> PAGE_SHIFT) & (PTRS_PER_TABLE - 1)
    present[inv, ent] = True
    w[inv, ent] = write
    f[inv, ent] = pfn
    pte.store(cids, present, w, f)
    if dirty.any():  # move_ptes() moves the dirty bit with the entry
        d = np.zeros_like(present)
        d[inv, ent] = dirty
        for n in np.flatnonzero(d.any(axis=1)).tolist():
            pte.mark_wp_dirty(int(cids[n]), bitmap_pack(d[n:n + 1])[0])


def _clear(k: Kernel, mm: MM, addrs: np.ndarray) -> None:
    """Clear moved entries at the source without touching the pages (they live on at the target)."""
    from ..arch import entry_value

    pmd_shift = k.geom.pmd.span.bit_length() - 1
    span_shift = k.geom.pte.span.bit_length() - 1
    pte = k.stores[PTE]
    for key in np.unique(addrs >> pmd_shift).tolist():
        base = key << pmd_shift
        sel = (addrs >> pmd_shift) == key
        entries = k.stores[PMD].entries[dir_of(k, mm, PTE, base, alloc=False).cid]
        slot = (addrs[sel] >> span_shift) & (PTRS_PER_TABLE - 1)
        if entry_tag(entries[slot[0]]) == E_LEAF:
            entries[slot] = 0
            continue
        spans, inv = np.unique(slot, return_inverse=True)
        ids = pte.cow(entry_value(entries[spans]))
        entries[spans] = mk_table(ids)
        present, w, f = pte.load(ids)
        ent = (addrs[sel] >> PAGE_SHIFT) & (PTRS_PER_TABLE - 1)
        present[inv, ent] = False
        w[inv, ent] = False
        f[inv, ent] = 0
        pte.store(ids, present, w, f)


__all__ = ["E_TABLE", "PAGE_SHIFT", "do_mremap", "move_page_tables"]
