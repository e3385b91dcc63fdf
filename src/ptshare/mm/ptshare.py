"""Sharing page tables between mms: the mechanism behind every policy that shares them.

Models ``huge_pmd_share()``/``huge_pmd_unshare()`` (mm/hugetlb.c), McCracken's
``pt_share_pte()``/``pt_unshare_range()`` (mm/ptshare.c of the 2005-2006 patches) and the table
copy of copy-on-write page tables.  The policy says *which* tables may be shared -- its share keys
(:meth:`Policy.pte_share_key` and friends) and :meth:`Policy.cow_pte_tables` -- and this module does
the sharing; walks meet shared tables through :func:`ptshare.mm.pagewalk.shared_entry`.

A table that may be shared by key is allocated as a shared table (:class:`SharedTables`) from the
start, with one user, and registered under its key.  Finding a partner is then a lookup instead
of a walk of ``i_mmap``, with the same outcome: a table whose span has the same key
``(identity, addr - origin)`` (see :class:`ptshare.policies.base.ShareKey`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..arch import mk_shared
from ..errors import InternalError
from . import mshare
from .frames import PG_EXCLUSIVE, ZERO_PFN, scattered
from .pagewalk import PMD, PTE, account_alloc, account_free, account_mm
from .pgtable import COPY, COW, COW_COUNTED, DROP

if TYPE_CHECKING:
    from ..policies.base import ShareKey
    from .kernel import Kernel
    from .mm_struct import MM
    from .vma import VMA


def mk_shared_entry(k: Kernel, sid: int | np.ndarray) -> int | np.ndarray:
    """Directory entries pointing at shared tables ``sid`` (each takes a storage reference)."""
    k.shared.get(sid)
    return mk_shared(sid)


# --- the registry of shareable tables ----------------------------------------------------------

def _registry_slots(k: Kernel, lvl: int, key: ShareKey, bases: np.ndarray) -> tuple[tuple, np.ndarray]:
    """Where the spans at ``bases`` are registered: one array per (level, identity, partner, phase),
    indexed by the span's place from the origin -- equal keys ``(identity, addr - origin)`` and
    partners, equal slots."""
    span = k.geom.levels[lvl].span
    return (lvl, key.identity, key.partner, key.origin % span), (bases - key.origin) // span


def registry_slot(k: Kernel, lvl: int, key: ShareKey, base: int) -> tuple[tuple, int]:
    """Where the level-``lvl`` span at ``base`` with ``key`` is registered (what ``share_where`` holds)."""
    where, slots = _registry_slots(k, lvl, key, np.array([base], dtype=np.int64))
    return where, int(slots[0])


def _lookup(k: Kernel, key: tuple, slots: np.ndarray) -> np.ndarray:
    table = k.share_index.get(key)
    out = np.zeros(len(slots), dtype=np.int64)
    if table is None:
        return out
    inside = (slots >= 0) & (slots < len(table))
    out[inside] = table[slots[inside]]
    return out


def _register(k: Kernel, key: tuple, slots: np.ndarray, sids: np.ndarray) -> None:
    table = k.share_index.get(key)
    need = int(slots.max()) + 1 if len(slots) else 0
    if table is None or len(table) < need:
        grown = np.zeros(max(need, 2 * (0 if table is None else len(table))), dtype=np.int64)
        if table is not None:
            grown[: len(table)] = table
        table = grown
        k.share_index[key] = table
    free = table[slots] == 0
    table[slots[free]] = sids[free]
    for slot, sid in zip(slots[free].tolist(), sids[free].tolist(), strict=True):
        k.share_where[sid] = (key, slot)


def unregister(k: Kernel, sid: int) -> None:
    """Stop offering ``sid`` to partners (it changed, or it is gone)."""
    where = k.share_where.pop(sid, None)
    if where is not None:
        key, slot = where
        k.share_index[key][slot] = 0


# --- sharing by key --------------------------------------------------------------------------

def offered(k: Kernel, vma: VMA, lvl: int, bases: np.ndarray) -> np.ndarray:
    """The shared tables that partners offer for ``vma``'s level-``lvl`` spans at ``bases``: 0 where
    none is registered, where the policy shares none for ``vma``, or where ``vma`` does not cover
    the span whole."""
    out = np.zeros(len(bases), dtype=np.int64)
    key = k.policy.share_key(lvl, vma)
    if key is None:
        return out
    span = k.geom.levels[lvl].span
    whole = (bases >= vma.vm_start) & (bases + span <= vma.vm_end)
    where, slots = _registry_slots(k, lvl, key, bases[whole])
    out[whole] = _lookup(k, where, slots)
    return out


def share_alloc(k: Kernel, mm: MM, vma: VMA, lvl: int, bases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Give ``mm`` level-``lvl`` tables for the spans at ``bases`` where the policy's key for
    ``vma`` says they are to be shared ones.

    Returns ``(sids, attached)``: the shared table of each span (0 where the span's table is to be
    an ordinary one) and whether it is a partner's (``huge_pmd_share``, ``pt_share_pte``) rather
    than new -- or, at a level the policy keeps in a host mm (mshare), the host's, linked into
    ``mm`` whether the fault found it or made it.  Only a span the VMA covers whole may share.
    """
    n = len(bases)
    sids = np.zeros(n, dtype=np.int64)
    attached = np.zeros(n, dtype=bool)
    key = k.policy.share_key(lvl, vma)
    if key is None:
        return sids, attached
    span = k.geom.levels[lvl].span
    whole = np.flatnonzero((bases >= vma.vm_start) & (bases + span <= vma.vm_end))
    if not len(whole):
        return sids, attached
    where, slots = _registry_slots(k, lvl, key, bases[whole])
    found = _lookup(k, where, slots)
    hit = found != 0
    attach(k, mm, lvl, found[hit])
    sids[whole[hit]] = found[hit]
    attached[whole[hit]] = True
    todo = whole[~hit]
    if len(todo):
        if lvl == PTE:
            zeros = np.zeros((len(todo), 512), bool)
            cids = k.stores[PTE].new(zeros, zeros, None)
        else:
            cids = np.array([k.stores[lvl].new() for _ in range(len(todo))], dtype=np.int64)
        mode = COPY if k.policy.unshare_mode == "copy" and lvl == PTE else DROP
        if lvl in k.policy.host_levels:  # the host mm's (mshare): allocated there, then linked
            new = mshare.host_alloc(k, vma, lvl, bases[todo], cids, mode)
            attach(k, mm, lvl, new)
            attached[todo] = True
        else:
            new = k.shared.new(lvl, cids, mm.id, mode)
            account_alloc(k, mm, lvl, len(todo))
            if lvl > PTE:
                mm.boxes.update(new.tolist())
        sids[todo] = new
        _register(k, where, slots[~hit], new)
    return sids, attached


def attach(k: Kernel, mm: MM, lvl: int, sids: np.ndarray, event: str = "pt_shared") -> None:
    """``mm`` starts using the shared tables ``sids`` (the caller installs the entries); ``event``
    counts them."""
    if len(sids) == 0:
        return
    np.add.at(k.shared.users, sids, 1)
    account_mm(mm, lvl, len(sids))
    mm.nr_shared += len(sids)
    if lvl > PTE:
        mm.boxes.update(sids.tolist())
    k.events.add(event, len(sids))


# --- sharing copy-on-write at fork ---------------------------------------------------------------

def cow_share(k: Kernel, parent: MM, child: MM, cids: np.ndarray) -> np.ndarray:
    """Fork shares the parent's PTE tables ``cids`` with the child copy-on-write instead of copying
    them: each becomes a shared table (unshared by copying) with the parent and the child as users.
    The parent's storage references move to the shared tables; the caller installs the entries of
    both.  The pages mapped keep their counts, raised when a table is copied (:func:`copy_shared`)
    -- unless the policy counts them at fork (:attr:`Policy.cow_pte_count_at_fork`): then each
    entry is handled as ``copy_present_pte`` handles it, in the shared table itself (Lin's
    ``copy_cow_pte_range``): the page gains a mapping for the child and the entry is
    write-protected."""
    counted = k.policy.cow_pte_count_at_fork
    if counted:
        cids = cids.copy()
        for n, cid in enumerate(cids.tolist()):
            cids[n] = _count_for_user(k, cid)
    sids = k.shared.new(PTE, cids, parent.id, COW_COUNTED if counted else COW)
    attach(k, child, PTE, sids, "pt_cow_shared")
    return sids


def _count_for_user(k: Kernel, cid: int) -> int:
    """One more user maps the pages of PTE contents ``cid``: each anonymous page gains a mapping
    and stops being exclusive, and every entry mapping an explicit frame is write-protected, so
    that the next write copies the page (copy_present_pte() of a copy-on-write mapping).  Returns
    the contents id the table holds now."""
    pte = k.stores[PTE]
    present, write, pfn = (a[0] for a in pte.load(np.array([cid])))
    cow = write & (pfn != 0)
    if cow.any():
        cid = int(pte.cow(np.array([cid]))[0])
        pte.store(np.array([cid]), present[None], (write & ~cow)[None], pfn[None])
    mapped = present & (pfn > ZERO_PFN)
    anon = pfn[mapped]
    k.frames.mapcount[anon] += 1
    k.frames.flags[anon] &= ~np.uint8(PG_EXCLUSIVE)
    k.events.add("cow_pte_counted", int(present.sum()))
    k.events.add("ptes_copied_scattered", scattered(pfn[None], mapped[None]))
    return cid


# --- letting go ------------------------------------------------------------------------------

def _let_go(k: Kernel, mm: MM, lvl: int, sid: int) -> None:
    """``mm``'s own bookkeeping when it stops using ``sid``: VmSHPT, if it attached the table rather
    than allocated it, and its list of shared tables with tables inside."""
    if int(k.shared.owner[sid]) == mm.id:
        k.shared.owner[sid] = 0
    else:
        mm.nr_shared -= 1
    if lvl > PTE:
        mm.boxes.discard(sid)


def release(k: Kernel, mm: MM, lvl: int, sid: int) -> None:
    """``mm`` drops shared table ``sid``, which others still use (the caller clears its entry).

    The table stays, every CPU's TLB is flushed at the end of the operation (``Kernel.tlb_finish``),
    and the mm refaults into a table of its own.
    """
    k.shared.users[sid] -= 1
    account_mm(mm, lvl, -1)
    _let_go(k, mm, lvl, sid)
    if k.shared.mode[sid] == COW_COUNTED:  # the mappings fork counted for this user go with it
        present, _write, pfn = (a[0] for a in k.stores[PTE].load(np.array([k.shared.content[sid]])))
        anon = pfn[present & (pfn > ZERO_PFN)]
        k.frames.mapcount[anon] -= 1
        k.events.add("ptes_zapped", int(present.sum()))
        k.events.add("ptes_zapped_rmap", len(anon))
    k.events.add("pt_unshared")
    k.flush_all_pending = True


def copy_shared(k: Kernel, mm: MM, lvl: int, sid: int) -> int:
    """``mm`` stops using the shared PTE table ``sid``, which others still use, and gets a private
    copy of it (the caller replaces its entry with the copy and drops its reference on ``sid``).

    Models the table copy of a copy-on-write page table (``copy_pte_range()`` run at the first
    change instead of at fork): the copy maps the same pages, so each anonymous page gains a
    mapping and is no longer exclusive, and every entry mapping one (an anonymous page or a private
    copy: only those are copy-on-write) is write-protected, in the copy and in the shared table, so
    that the next write through either copies the page -- or, where fork counted the pages for every
    user (``COW_COUNTED``), with no page reference taken now.  Returns the copy's contents id,
    holding one storage reference.
    """
    if lvl != PTE:
        raise InternalError("a shared table above the PTE level set to be unshared by copying", sid=sid, level=lvl)
    pte = k.stores[PTE]
    k.shared.users[sid] -= 1
    _let_go(k, mm, lvl, sid)
    cid = int(k.shared.content[sid])
    present, write, pfn = (a[0] for a in pte.load(np.array([cid])))
    cow = write & (pfn != 0)
    if cow.any():
        cid = k.shared.cow_content(sid)
        pte.store(np.array([cid]), present[None], (write & ~cow)[None], pfn[None])
    if k.shared.mode[sid] != COW_COUNTED:  # else fork counted the copy's mappings already
        mapped = present & (pfn > ZERO_PFN)
        anon = pfn[mapped]
        k.frames.mapcount[anon] += 1
        k.frames.flags[anon] &= ~np.uint8(PG_EXCLUSIVE)
        k.events.add("ptes_copied_scattered", scattered(pfn[None], mapped[None]))
    pte.get(cid)  # the copy holds what the shared table holds: storage is shared until one changes
    k.events.add("pt_copied")
    # The entries of a table whose pages fork counted are copied as they are (Lin's break of a COW
    # PTE: set_pte_at() per entry, no page reference taken).
    k.events.add("cow_pte_duplicated" if k.shared.mode[sid] == COW_COUNTED else "ptes_copied", int(present.sum()))
    k.events.add("pte_tables_copied")
    k.frames.alloc_pgtables(1)
    k.events.add("pgtable_alloc")
    k.flush_tlb_mm(mm)
    return cid


def free_last(k: Kernel, mm: MM, lvl: int, sid: int) -> None:
    """The last user frees shared table ``sid`` (after zapping it)."""
    k.shared.users[sid] = 0
    unregister(k, sid)
    _let_go(k, mm, lvl, sid)
    for inner in (PTE, PMD):
        children = int(k.shared.children[sid, inner])
        if children:
            k.frames.free_pgtables(children)
            k.events.add("pgtable_free", children)
            k.shared.children[sid, inner] = 0
    account_free(k, mm, lvl, 1)


def privatize(k: Kernel, mm: MM, lvl: int, sid: int) -> int:
    """``mm``, the last user of shared table ``sid``, takes it as an ordinary table of its own.

    Returns the contents id, whose storage reference passes from the shared table to the caller
    (who replaces the shared entry with a table entry and drops its reference on ``sid``).
    """
    cid = int(k.shared.content[sid])
    k.shared.content[sid] = 0
    k.shared.users[sid] = 0
    unregister(k, sid)
    _let_go(k, mm, lvl, sid)
    for inner in (PTE, PMD):
        account_mm(mm, inner, int(k.shared.children[sid, inner]))
        k.shared.children[sid, inner] = 0
    return cid


def attached_tables(k: Kernel, mm: MM) -> int:
    """Tables ``mm`` uses but did not allocate (VmSHPT): those it attached, and the tables inside
    shared tables it attached."""
    if not mm.boxes:
        return mm.nr_shared
    boxes = np.fromiter(mm.boxes, dtype=np.int64, count=len(mm.boxes))
    return mm.nr_shared + int(k.shared.children[boxes[k.shared.owner[boxes] != mm.id]].sum())


def vmpte_tables(k: Kernel, mm: MM) -> int:
    """Tables counted in ``mm``'s VmPTE, the tables inside shared tables included."""
    boxes = np.fromiter(mm.boxes, dtype=np.int64, count=len(mm.boxes))
    inside = int(k.shared.children[boxes].sum())
    return mm.nr_ptes + mm.nr_pmds + mm.nr_puds + inside


def host_tables(k: Kernel, mm: MM) -> int:
    """Tables ``mm`` uses that a host mm holds (:attr:`Policy.host_levels`, mshare): the shared tables
    of those levels it uses and the tables inside them.  Its VmPTE leaves them out."""
    levels = k.policy.host_levels
    if not levels or not mm.boxes:
        return 0
    boxes = np.fromiter(mm.boxes, dtype=np.int64, count=len(mm.boxes))
    held = boxes[np.isin(k.shared.level[boxes], levels)]
    return len(held) + int(k.shared.children[held].sum())
