"""Address translation through the simulated page tables: what the MMU would find.

Used by the write path (to stamp the pages a write reached), by the oracle (what a read returns)
and by the invariant checker.  Read-only: it never changes a table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..arch import (
    E_LEAF,
    E_SHARED,
    E_TABLE,
    PAGE_SHIFT,
    PTRS_PER_TABLE,
    entry_tag,
    entry_value,
    leaf_explicit,
)
from .pagewalk import PMD, PTE, PUD, entry_tables, walk

if TYPE_CHECKING:
    from .kernel import Kernel
    from .mm_struct import MM


def lookup(k: Kernel, mm: MM, addrs: np.ndarray, wp_dirty: np.ndarray | None = None,
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each address: (present, writable, explicit frame or 0).  Huge leaves count as present.
    ``wp_dirty``, if given (bool[n]), is set where the entry is dirty and write-protected."""
    n = len(addrs)
    present = np.zeros(n, dtype=bool)
    writable = np.zeros(n, dtype=bool)
    pfn = np.zeros(n, dtype=np.int64)
    if n == 0:
        return present, writable, pfn
    order = np.argsort(addrs, kind="stable")
    sorted_addrs = addrs[order]
    pud_shift = k.geom.pud.span.bit_length() - 1
    pmd_shift = k.geom.pmd.span.bit_length() - 1
    span_shift = k.geom.pte.span.bit_length() - 1
    pud_keys = sorted_addrs >> pud_shift
    for key in np.unique(pud_keys).tolist():
        lo, hi = key << pud_shift, (key + 1) << pud_shift
        for pud in walk(k, mm, lo, hi, PUD, write=False):
            sel = np.flatnonzero(pud_keys == key)
            _lookup_pud(k, pud.cid, sorted_addrs[sel], order[sel], pmd_shift, span_shift,
                        present, writable, pfn, wp_dirty)
    return present, writable, pfn


def _lookup_pud(k: Kernel, pud_cid: int, addrs: np.ndarray, where: np.ndarray, pmd_shift: int,
                span_shift: int, present: np.ndarray, writable: np.ndarray, pfn: np.ndarray,
                wp_dirty: np.ndarray | None) -> None:
    from ..arch import leaf_write

    pud_e = k.stores[PUD].entries[pud_cid, (addrs >> pmd_shift) & (PTRS_PER_TABLE - 1)]
    _sid, pmd_cid = entry_tables(k, pud_e)
    has_pmd = pmd_cid != 0
    if not has_pmd.any():
        return
    a, w, c = addrs[has_pmd], where[has_pmd], pmd_cid[has_pmd]
    pmd_e = k.stores[PMD].entries[c, (a >> span_shift) & (PTRS_PER_TABLE - 1)]
    tag = entry_tag(pmd_e)
    leaf = tag == E_LEAF
    if leaf.any():
        present[w[leaf]] = True
        writable[w[leaf]] = leaf_write(pmd_e[leaf])
        pfn[w[leaf]] = np.where(leaf_explicit(pmd_e[leaf]), entry_value(pmd_e[leaf]), 0)
    table = (tag == E_TABLE) | (tag == E_SHARED)
    if not table.any():
        return
    a, w = a[table], w[table]
    _sid, cid = entry_tables(k, pmd_e[table])
    store = k.stores[PTE]
    ent = (a >> PAGE_SHIFT) & (PTRS_PER_TABLE - 1)
    byte, bit = ent // 8, ent % 8
    present[w] = (store.present[cid, byte] >> bit) & 1 == 1
    writable[w] = (store.write[cid, byte] >> bit) & 1 == 1
    rows = store.row[cid]
    has_row = rows > 0
    got = np.zeros(len(a), dtype=np.int64)
    got[has_row] = store.pfn[rows[has_row], ent[has_row]]
    pfn[w] = got
    if wp_dirty is not None and store.wp_dirty:
        masks = store.wp_dirty_of(cid)
        wp_dirty[w] = masks[np.arange(len(a)), ent]


def translate(k: Kernel, mm: MM, addrs: np.ndarray) -> np.ndarray:
    """The frame each address maps to (0 where nothing is mapped)."""
    present, _writable, pfn = lookup(k, mm, addrs)
    implicit = present & (pfn == 0)
    if implicit.any():
        pfn[implicit] = _file_frames(k, mm, addrs[implicit])
    return pfn


def _file_frames(k: Kernel, mm: MM, addrs: np.ndarray) -> np.ndarray:
    """Page-cache frames behind implicit entries, found through the VMA that maps each address."""
    out = np.zeros(len(addrs), dtype=np.int64)
    starts = np.array([v.vm_start for v in mm.vmas], dtype=np.int64)
    which = np.searchsorted(starts, addrs, side="right") - 1
    for i in np.unique(which).tolist():
        vma = mm.vmas[i]
        sel = which == i
        idx = ((addrs[sel] - vma.vm_start) >> PAGE_SHIFT) + vma.vm_pgoff
        if vma.obj.is_hugetlb:
            idx >>= 9
        out[sel] = vma.obj.find(idx)
    return out


def read_stamps(k: Kernel, mm: MM, addrs: np.ndarray) -> np.ndarray:
    """What reading each address returns: the contents stamp of the frame it maps."""
    return k.frames.stamp[translate(k, mm, addrs)]
