"""Letting go of shared page tables over a range: McCracken's ``pt_unshare_range()`` and the
hugetlb ``huge_pmd_unshare()`` calls made before a range is changed (mprotect, mremap, munmap,
madvise, a VMA split, truncate).

A table used by others is dropped: the entry is cleared, the share count falls, every CPU's TLB
is flushed, and the mm refaults into a table of its own.  A table this mm alone still uses stays
its own, but is withdrawn from the partner registry, since the mapping it was registered for is
about to change: it becomes an ordinary table of this mm.  Truncation is the exception: it
changes no mapping, so there such a table stays shareable, as the kernel's partner search (a walk
of ``i_mmap``) would still find it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..arch import E_SHARED, E_TABLE, entry_tag, entry_value, mk_table
from . import ptshare
from .pagewalk import PMD, PTE, PUD, pud_tables, span_slices

if TYPE_CHECKING:
    from .kernel import Kernel
    from .mm_struct import MM


def unshare_tables(k: Kernel, mm: MM, start: int, end: int, *, pmd: bool = True, pte: bool = True,
                   keep_sole: bool = False) -> int:
    """Let go of shared PMD tables (``pmd``) and shared PTE tables (``pte``) mapping any of [start, end).

    With ``keep_sole``, a table this mm alone still uses stays shareable (the mapping itself is
    not changing: truncation).  Returns the number of tables dropped."""
    if not k.shared.nr_live:
        return 0
    dropped = 0
    pud = k.stores[PUD]
    for pud_cid, a, b in pud_tables(k, mm, start, end, write=True):
        i0, i1, _ = span_slices(k, PUD, a, b)
        for i in range(i0, i1):
            entry = int(pud.entries[pud_cid, i])
            tag = entry_tag(entry)
            if tag == E_SHARED and pmd:
                sid = int(entry_value(entry))
                if ptshare.release(k, mm, PMD, sid):
                    pud.entries[pud_cid, i] = 0
                    dropped += 1
                elif keep_sole:
                    continue
                else:
                    pud.entries[pud_cid, i] = mk_table(ptshare.privatize(k, mm, PMD, sid))
                k.shared.put(sid)
                entry = int(pud.entries[pud_cid, i])
                tag = entry_tag(entry)
            if tag == E_TABLE and pte:
                base = (a & ~(k.geom.pud.span - 1)) + i * k.geom.pud.entry_size
                lo, hi = max(a, base), min(b, base + k.geom.pud.entry_size)
                dropped += _unshare_ptes(k, mm, pud_cid, i, int(entry_value(entry)), lo, hi, keep_sole)
    return dropped


def _unshare_ptes(k: Kernel, mm: MM, pud_cid: int, i: int, pmd_cid: int, start: int, end: int,
                  keep_sole: bool) -> int:
    pmd = k.stores[PMD]
    j0, j1, _ = span_slices(k, PMD, start, end)
    row = pmd.entries[pmd_cid, j0:j1]
    shared = (entry_tag(row) == E_SHARED).nonzero()[0]
    if len(shared) == 0:
        return 0
    cid = pmd.cow(pmd_cid)
    k.stores[PUD].entries[pud_cid, i] = mk_table(cid)
    dropped = 0
    for n in shared.tolist():
        sid = int(entry_value(pmd.entries[cid, j0 + n]))
        if ptshare.release(k, mm, PTE, sid):
            pmd.entries[cid, j0 + n] = 0
            dropped += 1
        elif keep_sole:
            continue
        else:
            pmd.entries[cid, j0 + n] = mk_table(ptshare.privatize(k, mm, PTE, sid))
        k.shared.put(sid)
    return dropped
