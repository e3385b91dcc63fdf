"""Walking the upper levels of an mm's page tables, and the table allocation counters.

Models the pgd/p4d steps that every walker in mm/memory.c repeats (``pgd_offset``,
``p4d_alloc``, ``pud_alloc``...).  Operations do their own work at the PUD and PMD levels, where
tables are shared and where the leaves are; above that, every walk looks the same, so it is
written once here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from ..arch import E_NONE, E_SHARED, E_TABLE, entry_tag, entry_value, mk_table
from ..errors import InternalError

if TYPE_CHECKING:
    from .kernel import Kernel
    from .mm_struct import MM

PTE, PMD, PUD = 0, 1, 2


def pud_tables(k: Kernel, mm: MM, start: int, end: int, *, alloc: bool = False,
               write: bool = True) -> Iterator[tuple[int, int, int]]:
    """Yield ``(pud_cid, addr, next)`` for each PUD table that maps part of [start, end).

    With ``write``, the path from the PGD down is made private to ``mm`` first (the simulator's
    copy-on-write), so the caller may change the PUD table ``pud_cid`` in place.  With ``alloc``,
    missing tables on the way are allocated and counted, as ``p4d_alloc``/``pud_alloc`` do;
    without it, ranges with no table are skipped.
    """
    top = len(k.geom.levels) - 1
    if write:
        mm.pgd = k.stores[top].cow(mm.pgd)
    yield from _walk_dir(k, mm, top, mm.pgd, start, end, alloc, write)


def _walk_dir(k: Kernel, mm: MM, lvl: int, cid: int, start: int, end: int, alloc: bool,
              write: bool) -> Iterator[tuple[int, int, int]]:
    if lvl == PUD:
        yield cid, start, end
        return
    level = k.geom.levels[lvl]
    store = k.stores[lvl]
    child_store = k.stores[lvl - 1]
    addr = start
    while addr < end:
        nxt = k.geom.addr_end(level, addr, end)
        i = k.geom.index(level, addr)
        entry = int(store.entries[cid, i])
        tag = entry_tag(entry)
        if tag == E_NONE:
            if not alloc:
                addr = nxt
                continue
            child = child_store.new()
            store.entries[cid, i] = mk_table(child)
            account_alloc(k, mm, lvl - 1, 1)
        elif tag == E_TABLE:
            child = int(entry_value(entry))
            if write:
                new = child_store.cow(child)
                if new != child:
                    store.entries[cid, i] = mk_table(new)
                child = new
        else:
            raise InternalError("shared table above the PUD level", level=level.name, addr=hex(addr),
                                entry=hex(entry))
        yield from _walk_dir(k, mm, lvl - 1, child, addr, nxt, alloc, write)
        addr = nxt


def account_alloc(k: Kernel, mm: MM, lvl: int, n: int) -> None:
    """``n`` new tables of level ``lvl`` for ``mm``: VmPTE (PTE/PMD/PUD), NR_PAGETABLE, events."""
    if n == 0:
        return
    k.frames.alloc_pgtables(n)
    k.events.add("pgtable_alloc", n)
    account_mm(mm, lvl, n)


def account_free(k: Kernel, mm: MM, lvl: int, n: int) -> None:
    if n == 0:
        return
    k.frames.free_pgtables(n)
    k.events.add("pgtable_free", n)
    account_mm(mm, lvl, -n)


def account_mm(mm: MM, lvl: int, n: int) -> None:
    """Change the tables ``mm`` references (mm_inc_nr_ptes/pmds/puds); P4D and PGD are not counted."""
    if lvl == PTE:
        mm.nr_ptes += n
    elif lvl == PMD:
        mm.nr_pmds += n
    elif lvl == PUD:
        mm.nr_puds += n


def span_slices(k: Kernel, lvl: int, start: int, end: int) -> tuple[int, int, np.ndarray]:
    """Entry indices [i0, i1) of a level-``lvl`` table covering [start, end), and each entry's address.

    ``start`` and ``end`` must lie within one table of that level.
    """
    level = k.geom.levels[lvl - 1]  # entries of a level-lvl table each map a level-(lvl-1) span
    size = level.span
    base = start & ~(k.geom.levels[lvl].span - 1)
    i0 = (start - base) // size
    i1 = -(-(end - base) // size)
    addrs = base + np.arange(i0, i1, dtype=np.int64) * size
    return i0, i1, addrs


def is_shared_entry(entries: np.ndarray) -> np.ndarray:
    return entry_tag(entries) == E_SHARED
