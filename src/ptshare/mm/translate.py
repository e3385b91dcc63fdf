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
from .huge_memory import leaf_pfns
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
        pfn[w[leaf]] = np.where(leaf_explicit(pmd_e[leaf]), leaf_pfns(k, pmd_e[leaf], a[leaf]), 0)
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


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def mix(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    """A 64-bit hash of two values (splitmix64's finaliser): identities built from parts."""
    with np.errstate(over="ignore"):  # multiplication modulo 2**64 is the point
        x = np.asarray(a, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.asarray(b).astype(np.uint64)
        x ^= x >> np.uint64(30)
        x *= _M1
        x ^= x >> np.uint64(27)
        x *= _M2
        x ^= x >> np.uint64(31)
    return x


_SHARED_ROOT = 0x5348415245445054  # identities of shared tables live apart from any mm's


def table_walk(k: Kernel, mm: MM, addrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The page-table page each level of a hardware walk of ``addrs`` reads, and the leaf level.

    Returns ``(ident, leaf)``: ``ident[lvl, i]`` identifies the table of level ``lvl`` (0 = PTE)
    that translating ``addrs[i]`` reads -- one value per physical table page, so a shared table
    (hugetlb PMD sharing, shared PTE tables, and every table below a shared one) has one identity
    for all its users and a private table is its mm's own -- and ``leaf[i]`` is the level of the
    entry that maps the page (0 for a 4 KiB page, 1 for a 2 MiB hugetlb page, -1 if unmapped).
    Identities are hashes of the path from the mm's PGD (or from the shared table) down, not
    storage ids, which equal tables share.
    """
    n = len(addrs)
    top = len(k.geom.levels) - 1
    ident = np.zeros((top + 1, n), dtype=np.uint64)
    leaf = np.full(n, -1, dtype=np.int8)
    live = np.arange(n)
    cid = np.full(n, mm.pgd, dtype=np.int64)
    here = mix(np.full(n, mm.id, dtype=np.uint64), 0)
    for lvl in range(top, -1, -1):
        ident[lvl, live] = here
        if lvl == 0:
            leaf[live] = 0
            break
        idx = (addrs[live] >> k.geom.levels[lvl].shift) & (PTRS_PER_TABLE - 1)
        e = k.stores[lvl].entries[cid, idx]
        tag = entry_tag(e)
        huge = tag == E_LEAF
        leaf[live[huge]] = lvl
        down = (tag == E_TABLE) | (tag == E_SHARED)
        shared = tag[down] == E_SHARED
        value = entry_value(e[down])
        cid = np.where(shared, k.shared.content[np.where(shared, value, 0)], value)
        here = np.where(shared, mix(np.full(len(value), _SHARED_ROOT, dtype=np.uint64), value),
                        mix(here[down], idx[down]))
        live = live[down]
    return ident, leaf
