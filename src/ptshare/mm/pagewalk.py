"""Walking an mm's page tables: the one upper-level walker, shared entries, and table accounting.

Models the descent that every walker in mm/memory.c repeats (``pgd_offset`` -> ``p4d_offset`` ->
``pud_offset``..., with ``p4d_alloc``/``pud_alloc`` on the fault path) once, in :func:`walk`:
the operations write only their per-level steps (``copy_pmd_range``, ``zap_pmd_range``,
``change_pmd_range``...), where the leaves are.

A walk can meet a *shared* table (hugetlb PMD sharing, McCracken's tables, a copy-on-write table
of fork) at any level.  What it does with it is :func:`shared_entry`, written once for every
walker and every level: enter it (a change is then seen by every user), hand it to the caller, or
let go of it -- look it up, and either release it, clear the entry and drop the reference
(*drop*), or take a private copy of it (*copy*), as the table's unshare mode says.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np

from ..arch import E_NONE, E_SHARED, E_TABLE, PTRS_PER_TABLE, entry_tag, entry_value, mk_table
from ..errors import InternalError
from .pgtable import DROP

if TYPE_CHECKING:
    from .kernel import Kernel
    from .mm_struct import MM
    from .vma import VMA

PTE, PMD, PUD = 0, 1, 2


class Shared(Enum):
    """What a walk does with a shared table it meets (see :func:`shared_entry`)."""

    ENTER = "enter"  # walk into it: a change is seen by every user (faults fill shared tables)
    YIELD = "yield"  # hand it to the caller unentered (fork attaches it in the child)
    UNSHARE = "unshare"  # let go before the mapping changes; a sole user takes it as its own
    UNSHARE_OTHERS = "unshare-others"  # as UNSHARE, but a sole user keeps it shareable (truncate)
    WITHDRAW = "withdraw"  # the VMA's share key changed (a split): a sole user takes it as its own,
    # a table others use stays shared (they still offer it)
    UNMAP = "unmap"  # as UNSHARE, before the range is unmapped: a span it covers whole is never copied
    ZAP = "zap"  # entries of the range are about to go: drop it if the range covers its span
    DROP = "drop"  # the whole mm is going (exit, free_pgtables): drop it, never copy


@dataclass(slots=True)
class Table:
    """A table a walk reached: its level and contents, and the part of the walk's range it maps.

    ``sid`` is the shared table it is (0: the mm's own), ``box`` the innermost shared table it is
    or lies in (0: none), where tables allocated below it are counted (:func:`account_alloc`).
    ``dir_cid``/``index`` locate its entry in the directory table above.
    """

    lvl: int
    cid: int
    sid: int
    box: int
    start: int
    end: int
    dir_cid: int
    index: int
    linked: bool = False  # a host mm's table (mshare) linked into the mm by this walk: a fault of its own


def walk(k: Kernel, mm: MM, start: int, end: int, lvl: int, *, write: bool = True, alloc: bool = False,
         vma: VMA | None = None, how: Shared = Shared.ENTER, levels: tuple[int, ...] | None = None,
         ) -> Iterator[Table]:
    """Yield each level-``lvl`` table that maps part of [start, end), in address order.

    With ``write``, each table yielded is made private to its owner first (the simulator's
    copy-on-write; see :func:`own`), so the caller may change it in place; the directories above
    are made private wherever the walk may change them.  With ``alloc``, missing tables on the way
    are allocated and counted, as ``p4d_alloc``/``pud_alloc`` do -- shared by the policy's key for
    ``vma`` where it has one -- and without it ranges with no table are skipped.  Shared tables met
    on the way, or at ``lvl``, are treated as ``how`` says; with ``levels``, only shared tables of
    those levels are, and the others are skipped.
    """
    top = len(k.geom.levels) - 1
    modify = write or alloc or how not in (Shared.ENTER, Shared.YIELD)
    if modify:
        mm.pgd = k.stores[top].cow(mm.pgd)
    root = Table(top, mm.pgd, 0, 0, start, end, 0, 0)
    if lvl == top:
        yield root
        return
    yield from _walk_dir(k, mm, root, lvl, write, modify, alloc, vma, how, levels)


def walk_below(k: Kernel, mm: MM, table: Table, lvl: int, *, write: bool = True, how: Shared = Shared.ENTER,
               ) -> Iterator[Table]:
    """:func:`walk` from ``table`` (one a walk yielded) down: the level-``lvl`` tables below it in
    [table.start, table.end)."""
    modify = write or how not in (Shared.ENTER, Shared.YIELD)
    yield from _walk_dir(k, mm, table, lvl, write, modify, False, None, how, None)


def _walk_dir(k: Kernel, mm: MM, parent: Table, lvl: int, write: bool, modify: bool, alloc: bool,
              vma: VMA | None, how: Shared, levels: tuple[int, ...] | None) -> Iterator[Table]:
    plvl = parent.lvl
    clvl = plvl - 1
    private = write if clvl == lvl else modify
    level = k.geom.levels[plvl]
    store = k.stores[plvl]
    child_store = k.stores[clvl]
    # pXd_addr_end() and pXd_index() (Geometry.addr_end, Geometry.index) written out: this loop runs
    # for every table every walk reaches.
    shift, size, end = level.shift, level.entry_size, parent.end
    addr = parent.start
    while addr < end:
        nxt = min((addr + size) & ~(size - 1), end)
        i = (addr >> shift) & (PTRS_PER_TABLE - 1)
        entry = int(store.entries[parent.cid, i])
        tag = entry_tag(entry)
        if tag == E_NONE:
            if not alloc:
                addr = nxt
                continue
            child = _alloc_dir(k, mm, vma, parent, i, addr, nxt)
        elif tag == E_TABLE:
            cid = int(entry_value(entry))
            if private:
                new = child_store.cow(cid)
                if new != cid:
                    store.entries[parent.cid, i] = mk_table(new)
                cid = new
            child = Table(clvl, cid, 0, parent.box, addr, nxt, parent.cid, i)
        elif tag == E_SHARED:
            if levels is not None and clvl not in levels:
                addr = nxt
                continue
            child = shared_entry(k, mm, clvl, parent.cid, i, addr, nxt, how, parent.box, private)
            if child is None:
                addr = nxt
                continue
        else:
            raise InternalError("huge leaf above the level walked to", level=level.name, addr=hex(addr),
                                entry=hex(entry))
        if clvl == lvl or (child.sid and how is Shared.YIELD):
            yield child
        else:
            yield from _walk_dir(k, mm, child, lvl, write, modify, alloc, vma, how, levels)
        addr = nxt


def dir_of(k: Kernel, mm: MM, lvl: int, addr: int, *, alloc: bool = True) -> Table | None:
    """The directory table (of level ``lvl + 1``) holding the entry for the level-``lvl`` table at
    ``addr``, allocated if missing (``alloc``) and made private to its owner; None if missing."""
    return next(walk(k, mm, addr, addr + 1, lvl + 1, alloc=alloc), None)


def own(k: Kernel, table: Table) -> int:
    """Make ``table``'s contents private to its owner -- the mm, or the shared table it is -- before
    changing them (the simulator's copy-on-write); returns them."""
    if table.sid:
        table.cid = k.shared.cow_content(table.sid)
    else:
        store = k.stores[table.lvl]
        cid = int(store.cow(np.array([table.cid]))[0]) if table.lvl == PTE else store.cow(table.cid)
        if cid != table.cid:
            k.stores[table.lvl + 1].entries[table.dir_cid, table.index] = mk_table(cid)
            table.cid = cid
    return table.cid


def _alloc_dir(k: Kernel, mm: MM, vma: VMA | None, parent: Table, i: int, start: int, end: int) -> Table:
    """A missing directory table (``p4d_alloc``/``pud_alloc``): shared by the policy's key for
    ``vma`` where it has one (and the VMA covers the span whole), the mm's own otherwise."""
    from . import ptshare

    clvl = parent.lvl - 1
    base = start & ~(k.geom.levels[clvl].span - 1)
    if vma is not None and not parent.box:
        sids, attached = ptshare.share_alloc(k, mm, vma, clvl, np.array([base], dtype=np.int64))
        sid = int(sids[0])
        if sid:
            k.stores[parent.lvl].entries[parent.cid, i] = ptshare.mk_shared_entry(k, sid)
            linked = bool(attached[0]) and clvl in k.policy.host_levels
            return Table(clvl, k.shared.cow_content(sid), sid, sid, start, end, parent.cid, i, linked)
    cid = k.stores[clvl].new()
    k.stores[parent.lvl].entries[parent.cid, i] = mk_table(cid)
    account_alloc(k, mm, clvl, 1, parent.box)
    return Table(clvl, cid, 0, parent.box, start, end, parent.cid, i)


def shared_entry(k: Kernel, mm: MM, lvl: int, dir_cid: int, i: int, start: int, end: int, how: Shared,
                 box: int = 0, write: bool = True) -> Table | None:
    """The shared level-``lvl`` table at entry ``i`` of directory contents ``dir_cid``, met by a walk
    of [start, end) (within its span): what ``how`` says to do with it.

    Returns the table to go on with -- the shared table itself, or the mm's own table it became
    -- or None when the walk is to skip it (it was let go of, or is kept as it is).  Letting go,
    where others still use the table, is the table's unshare mode: *drop* releases it, clears the
    entry and drops the reference (the mm refaults into a table of its own); *copy* gives the mm a
    private copy of its contents.  A sole user takes the table as its own (``UNSHARE``).  A table
    entered with ``write`` has its contents made private to it (the simulator's copy-on-write).
    """
    entries = k.stores[lvl + 1].entries
    sid = int(entry_value(entries[dir_cid, i]))
    if how is Shared.ENTER or how is Shared.YIELD:
        cid = k.shared.cow_content(sid) if write and how is Shared.ENTER else int(k.shared.content[sid])
        return Table(lvl, cid, sid, sid, start, end, dir_cid, i)
    from . import ptshare  # here, not above: a walk enters shared tables far more often than it lets go

    if how is Shared.WITHDRAW and int(k.shared.users[sid]) > 1:
        return None
    if int(k.shared.users[sid]) > 1:
        span = k.geom.levels[lvl].span
        base = start & ~(span - 1)
        whole = start <= base and base + span <= end
        if k.shared.mode[sid] != DROP and not (how is Shared.DROP or (how in (Shared.ZAP, Shared.UNMAP) and whole)):
            cid = ptshare.copy_shared(k, mm, lvl, sid)
        else:
            ptshare.release(k, mm, lvl, sid)
            cid = 0
        entries = k.stores[lvl + 1].entries
        entries[dir_cid, i] = mk_table(cid) if cid else 0
        k.shared.put(sid)
        return Table(lvl, cid, 0, box, start, end, dir_cid, i) if cid else None
    if how in (Shared.UNSHARE, Shared.UNMAP, Shared.WITHDRAW):
        cid = ptshare.privatize(k, mm, lvl, sid)
        entries[dir_cid, i] = mk_table(cid)
        k.shared.put(sid)
        return Table(lvl, cid, 0, box, start, end, dir_cid, i)
    if how is Shared.UNSHARE_OTHERS:
        return None
    return Table(lvl, k.shared.cow_content(sid), sid, sid, start, end, dir_cid, i)


def shared_entries(k: Kernel, mm: MM, pmd: Table, idx: np.ndarray, addrs: np.ndarray, how: Shared,
                   ) -> list[tuple[int, Table]]:
    """:func:`shared_entry` for the shared PTE tables at entries ``idx`` of the PMD table ``pmd``
    (``addrs``: each span's first address), met by a walk of [pmd.start, pmd.end).  Returns
    ``(n, table)`` for each ``idx[n]`` the walk goes on with."""
    span = k.geom.pte.span
    out = []
    for n, (i, a) in enumerate(zip(idx.tolist(), addrs.tolist(), strict=True)):
        got = shared_entry(k, mm, PTE, pmd.cid, i, max(pmd.start, a), min(pmd.end, a + span), how, pmd.box)
        if got is not None:
            out.append((n, got))
    return out


def entry_tables(k: Kernel, entries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For directory entries: the shared table each points at (0 where none) and the contents of
    the table it points at, shared or the mm's own (0 for an empty entry or a huge leaf)."""
    tags = entry_tag(entries)
    values = entry_value(entries)
    sid = np.where(tags == E_SHARED, values, 0)
    return sid, np.where(sid != 0, k.shared.content[sid], np.where(tags == E_TABLE, values, 0))


# --- accounting ----------------------------------------------------------------------------------

def account_alloc(k: Kernel, mm: MM, lvl: int, n: int, box: int = 0) -> None:
    """``n`` new tables of level ``lvl``: NR_PAGETABLE and events, and VmPTE (PTE/PMD/PUD) of
    ``mm`` -- or, inside the shared table ``box``, of every user of it."""
    if n == 0:
        return
    k.frames.alloc_pgtables(n)
    k.events.add("pgtable_alloc", n)
    if box:
        k.shared.children[box, lvl] += n
    else:
        account_mm(mm, lvl, n)


def account_free(k: Kernel, mm: MM, lvl: int, n: int, box: int = 0) -> None:
    if n == 0:
        return
    k.frames.free_pgtables(n)
    k.events.add("pgtable_free", n)
    if box:
        k.shared.children[box, lvl] -= n
    else:
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


