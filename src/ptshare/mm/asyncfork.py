"""Async-fork: the copy of the PMD and PTE levels done off the parent's path (Pang et al., PVLDB 2023).

Fork under async-fork copies the VMAs and the upper levels of the page tables and returns; the
child copies the PMD and PTE levels before it runs, and a parent about to change a range the child
has not copied yet copies that range to the child itself first ("proactive synchronisation").

The simulator makes the whole copy at fork, as Linux does: the child's tables, the parent's
write-protected entries and the pages' counts are Linux's from the fork on, so every process sees
what it sees under Linux.  What moves is the *cost*: :func:`copy_pud_range_async` takes the events
of copying the PMD and PTE levels out of the fork and keeps them here, per 2 MiB span, in a
:class:`PendingCopy`, until the copy of that span is done in the model --

* by the child, off the parent's path, before the child does anything (:func:`wait_copy`, when an
  operation looks the child up): the events are counted then, and in ``Kernel.offpath`` too, as
  background work;
* by the parent, on its own path, if it changes the span first: mprotect, munmap, madvise or
  mremap over it (:func:`range_changed`), or anything else that changes its PTE table -- a fault
  that writes or fills an entry, exit, exec (:func:`settle`, after every operation).  Those are
  read off the parent's PMD entries: a change to a PTE table gives it new contents and so a new
  entry (the simulator's copy-on-write of table storage), so an entry that differs from the one
  fork left is a span the parent changed.

Events of the copy that belong to no span (the child's PMD tables, huge PMD entries) are
background work whatever the parent does (a simplification).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..arch import E_TABLE, PAGE_SHIFT, PTRS_PER_TABLE, bitmap_pack, bitmap_weight, entry_tag, entry_value, range_bits
from ..errors import InternalError
from .events import NAMES
from .pagewalk import PMD, Table, span_slices, walk

if TYPE_CHECKING:
    from .kernel import Kernel
    from .mm_struct import MM, Task
    from .vma import VMA

_PTES = NAMES.index("ptes_copied")
_TABLES = NAMES.index("pte_tables_copied")
_ALLOC = NAMES.index("pgtable_alloc")


@dataclass
class PendingCopy:
    """What one fork left the child to copy: per 2 MiB span of the parent's, the parent's PMD entry
    as fork left it (``entries``), the PTEs (``ptes``) and new child tables (``tables``, 0 or 1) the
    span's copy takes; ``rest``, the events of the copy that belong to no span."""

    parent: MM
    child: MM
    addrs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    entries: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ptes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    tables: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    rest: np.ndarray = field(default_factory=lambda: np.zeros(len(NAMES), np.int64))

    def keep(self, mask: np.ndarray) -> None:
        self.addrs, self.entries = self.addrs[mask], self.entries[mask]
        self.ptes, self.tables = self.ptes[mask], self.tables[mask]


def copy_pud_range_async(k: Kernel, dst: VMA, src: VMA, src_pud: Table,
                         copy_pud_range: Callable[[Kernel, VMA, VMA, Table], None]) -> None:
    """``copy_pud_range`` (the PMD and PTE levels under one of the parent's PUD tables) as async-fork
    does it: made now, its events held back for the child to count (or the parent, see
    :func:`settle`)."""
    before = k.events.snapshot()
    copy_pud_range(k, dst, src, src_pud)
    delta = k.events.values - before
    k.events.values -= delta
    pending = _pending(k, src.mm, dst.mm)
    start, end = max(src.vm_start, src_pud.start), min(src.vm_end, src_pud.end)
    addrs, entries, ptes = [], [], []
    for pmd in walk(k, src.mm, start, end, PMD, write=False):
        a, e, n = _spans(k, pmd)
        addrs.append(a)
        entries.append(e)
        ptes.append(n)
    if not addrs:
        pending.rest += delta
        return
    a, e, n = np.concatenate(addrs), np.concatenate(entries), np.concatenate(ptes)
    t = (~np.isin(a, pending.addrs)).astype(np.int64)  # a span an earlier VMA shares has its table
    pending.addrs = np.concatenate([pending.addrs, a])
    pending.entries = np.concatenate([pending.entries, e])
    pending.ptes = np.concatenate([pending.ptes, n])
    pending.tables = np.concatenate([pending.tables, t])
    rest = delta.copy()
    rest[_PTES] -= int(n.sum())
    rest[_TABLES] -= int(t.sum())
    rest[_ALLOC] -= int(t.sum())
    if (rest < 0).any() or rest[_PTES] or rest[_TABLES]:
        raise InternalError("async-fork: the copy's events do not add up to its spans'", vma=src,
                            events={name: int(v) for name, v in zip(NAMES, delta, strict=True) if v},
                            ptes=int(n.sum()), tables=int(t.sum()))
    pending.rest += rest


def _pending(k: Kernel, parent: MM, child: MM) -> PendingCopy:
    """This fork's record (fork copies VMA after VMA into one child)."""
    if k.background and k.background[-1].child is child:
        return k.background[-1]
    pending = PendingCopy(parent, child)
    k.background.append(pending)
    return pending


def _spans(k: Kernel, pmd: Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The spans of the parent's PMD table ``pmd`` that hold a PTE table: their addresses, the
    entries, and the PTEs of [pmd.start, pmd.end) each maps."""
    i0, i1, addrs = span_slices(k, PMD, pmd.start, pmd.end)
    row = k.stores[PMD].entries[pmd.cid, i0:i1]
    table = np.flatnonzero(entry_tag(row) == E_TABLE)
    addrs, row = addrs[table], row[table]
    lo = np.clip((pmd.start - addrs) >> PAGE_SHIFT, 0, PTRS_PER_TABLE)
    hi = np.clip((pmd.end - addrs) >> PAGE_SHIFT, 0, PTRS_PER_TABLE)
    present = k.stores[0].present[entry_value(row)] & bitmap_pack(range_bits(lo, hi))
    return addrs, row, bitmap_weight(present).astype(np.int64)


def wait_copy(k: Kernel, task: Task) -> None:
    """``task`` is about to run: if it is a child whose tables are still being copied, the copy
    finishes first -- off its parent's path."""
    if not k.background:
        return
    for pending in [p for p in k.background if p.child is task.mm]:
        _finish(k, pending, background=True)


def settle(k: Kernel) -> None:
    """After an operation: the spans a parent changed before its child copied them were copied by
    the parent first, on its path (proactive synchronisation); a parent gone, all of them."""
    if not k.background:
        return
    for pending in list(k.background):
        if pending.child.dead:
            _finish(k, pending, background=True)
        elif pending.parent.dead:
            _finish(k, pending, background=False)
        else:
            changed = changed_spans(k, pending)
            if changed.any():
                _charge(k, pending, changed, background=False)
                pending.keep(~changed)


def range_changed(k: Kernel, mm: MM, start: int, length: int) -> None:
    """``mm`` changed the mappings of [start, start + length) (munmap, mprotect, madvise, mremap):
    as a parent, it copied the spans there its children had not copied yet first, whether or not
    their entries changed (mprotect to read-only of entries fork write-protected changes none)."""
    for pending in k.background:
        if pending.parent is mm:
            inside = (pending.addrs < start + length) & (pending.addrs + k.geom.pmd_size > start)
            if inside.any():
                _charge(k, pending, inside, background=False)
                pending.keep(~inside)


def changed_spans(k: Kernel, pending: PendingCopy) -> np.ndarray:
    """Which of ``pending``'s spans have another PMD entry in the parent than fork left there."""
    return pmd_entries(k, pending.parent, pending.addrs) != pending.entries


def pmd_entries(k: Kernel, mm: MM, addrs: np.ndarray) -> np.ndarray:
    """``mm``'s PMD entries for the 2 MiB spans at ``addrs`` (0 where it has no PMD table)."""
    out = np.zeros(len(addrs), dtype=np.int64)
    pmd_span = k.geom.levels[PMD].span
    bases = addrs & ~np.int64(pmd_span - 1)
    for base in np.unique(bases).tolist():
        table = next(walk(k, mm, base, base + pmd_span, PMD, write=False), None)
        if table is not None:
            at = np.flatnonzero(bases == base)
            out[at] = k.stores[PMD].entries[table.cid, (addrs[at] >> k.geom.pmd.shift) & (PTRS_PER_TABLE - 1)]
    return out


def _finish(k: Kernel, pending: PendingCopy, *, background: bool) -> None:
    _charge(k, pending, np.ones(len(pending.addrs), dtype=bool), background=background)
    k.events.values += pending.rest
    k.offpath.values += pending.rest
    k.background.remove(pending)


def _charge(k: Kernel, pending: PendingCopy, spans: np.ndarray, *, background: bool) -> None:
    """Count the copy of ``spans``: in the events, and as off-path work if ``background``."""
    ptes, tables, n = int(pending.ptes[spans].sum()), int(pending.tables[spans].sum()), int(spans.sum())
    for events in (k.events, k.offpath) if background else (k.events,):
        events.add("ptes_copied", ptes)
        events.add("pte_tables_copied", tables)
        events.add("pgtable_alloc", tables)
        events.add("pt_copied_background" if background else "pt_copied_sync", n)
