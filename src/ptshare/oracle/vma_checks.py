"""Invariants of an mm's VMAs, checked with the others (:mod:`.invariants`) after every operation.

* the VMAs are sorted, page-aligned, non-empty and do not overlap;
* a VMA has an anon_vma exactly when its anon_vma chain is not empty, and the anon_vma is the
  chain's own (last) entry;
* an anonymous page is mapped only in a VMA with an anon_vma: fork copies the page tables of a VMA
  only when it has one (``vma_needs_copy``), so a merge or a move that lost it would give a child
  the wrong memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..arch import PAGE_SHIFT, PAGE_SIZE
from ..errors import InternalError
from ..mm.frames import PG_ANON, ZERO_PFN
from ..mm.pagewalk import PTE

if TYPE_CHECKING:
    from ..mm.kernel import Kernel
    from ..mm.mm_struct import MM


def check_vmas(k: Kernel, name: str, mm: MM, ptes: list[tuple[int, int, int, bool]]) -> None:
    """Check ``mm``'s VMAs; ``ptes`` are its PTE tables as (content id, base address, ...)."""
    prev_end = 0
    for vma in mm.vmas:
        if vma.vm_start % PAGE_SIZE or vma.vm_end % PAGE_SIZE or vma.vm_end <= vma.vm_start:
            raise InternalError("VMA not page-aligned or empty", process=name, vma=vma)
        if vma.vm_start < prev_end:
            raise InternalError("VMAs overlap or are out of order", process=name, vma=vma, prev_end=hex(prev_end))
        prev_end = vma.vm_end
        if (vma.anon_vma is None) != (not vma.anon_vma_chain) or \
                (vma.anon_vma is not None and vma.anon_vma_chain[-1] is not vma.anon_vma):
            raise InternalError("anon_vma and anon_vma chain disagree", process=name, vma=vma,
                                chain=vma.anon_vma_chain)
    without = [v for v in mm.vmas if v.obj is None and v.anon_vma is None]
    if not without or not ptes:
        return
    starts = np.array([v.vm_start for v in without], dtype=np.int64)
    ends = np.array([v.vm_end for v in without], dtype=np.int64)
    present, _write, pfn = k.stores[PTE].load(np.array([cid for cid, *_ in ptes]))
    bases = np.array([base for _cid, base, *_ in ptes], dtype=np.int64)
    row, ent = np.nonzero(present & (pfn > ZERO_PFN))
    anon = (k.frames.flags[pfn[row, ent]] & PG_ANON) != 0
    addrs = bases[row[anon]] + (ent[anon].astype(np.int64) << PAGE_SHIFT)
    which = np.searchsorted(starts, addrs, side="right") - 1
    inside = (which >= 0) & (addrs < ends[np.maximum(which, 0)])
    if inside.any():
        vma = without[int(which[inside][0])]
        raise InternalError("anonymous page in a VMA without an anon_vma", process=name, vma=vma,
                            addr=hex(int(addrs[inside][0])))
