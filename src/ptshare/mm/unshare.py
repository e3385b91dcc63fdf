"""Letting go of shared page tables over a range: McCracken's ``pt_unshare_range()`` and the
hugetlb ``huge_pmd_unshare()`` calls made before a range is changed (mprotect, mremap, munmap,
madvise, a VMA split, truncate).

A table used by others is let go of as its unshare mode says (:func:`pagewalk.shared_entry`):
dropped -- the entry is cleared, the share count falls, every CPU's TLB is flushed, and the mm
refaults into a table of its own -- or copied.  A table this mm alone still uses stays its own,
but is withdrawn from the partner registry, since the mapping it was registered for is about to
change: it becomes an ordinary table of this mm.  Truncation is the exception: it changes no
mapping, so there such a table stays shareable, as the kernel's partner search (a walk of
``i_mmap``) would still find it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..arch import E_SHARED, entry_tag
from .pagewalk import PMD, PTE, PUD, Shared, own, shared_entries, span_slices, walk

if TYPE_CHECKING:
    from .kernel import Kernel
    from .mm_struct import MM
    from .vma import VMA

ALL_LEVELS = (PTE, PMD, PUD)


def unshare_tables(k: Kernel, mm: MM, start: int, end: int, *, levels: tuple[int, ...] = ALL_LEVELS,
                   keep_sole: bool = False, unmap: bool = False, withdraw: bool = False) -> None:
    """Let go of the shared tables of ``levels`` mapping any of [start, end).

    With ``keep_sole``, a table this mm alone still uses stays shareable (the mapping itself is
    not changing: truncation); with ``unmap``, the range is about to be unmapped, so a table whose
    span it covers whole is dropped even where its mode is to copy it; with ``withdraw``, only the
    tables this mm alone uses are let go of (taken as its own), as after a split."""
    if not k.shared.nr_live:
        return
    how = (Shared.UNSHARE_OTHERS if keep_sole else Shared.UNMAP if unmap else
           Shared.WITHDRAW if withdraw else Shared.UNSHARE)
    for pmd in walk(k, mm, start, end, PMD, write=False, how=how, levels=levels):
        if pmd.sid or PTE not in levels:
            continue
        i0, i1, addrs = span_slices(k, PMD, pmd.start, pmd.end)
        shared = np.flatnonzero(entry_tag(k.stores[PMD].entries[pmd.cid, i0:i1]) == E_SHARED)
        if len(shared):
            own(k, pmd)
            shared_entries(k, mm, pmd, i0 + shared, addrs[shared], how)


def withdraw_rekeyed(k: Kernel, mm: MM, vmas: tuple[VMA, ...], old_keys: list) -> None:
    """After a split, the tables of each part whose share key changed (McCracken's partners match
    a VMA's ``vm_start`` and ``vm_end``) are no longer found through this mm's VMA: one this mm
    alone uses is withdrawn from the registry and becomes its own; one others use stays offered,
    as their VMAs still match.  ``old_keys``: the key of each level before the split."""
    if not k.shared.nr_live:
        return
    for vma in vmas:
        levels = tuple(lvl for lvl in ALL_LEVELS
                       if old_keys[lvl] is not None and k.policy.share_key(lvl, vma) != old_keys[lvl])
        if levels:
            unshare_tables(k, mm, vma.vm_start, vma.vm_end, levels=levels, withdraw=True)
