"""Sharing page tables between mms: the mechanism behind hugetlb PMD sharing and shared PTE tables.

Models ``huge_pmd_share()``/``huge_pmd_unshare()`` (mm/hugetlb.c) and McCracken's
``pt_share_pte()``/``pt_unshare_range()`` (mm/ptshare.c of the 2005-2006 patches).  The policy
says *which* VMAs may share (:meth:`Policy.pte_shareable`, :meth:`Policy.pmd_shareable`,
``hugetlb_pmd_share``); this module does the sharing.

A table that may be shared is allocated as a shared table (:class:`SharedTables`) from the start,
with one user, and registered under the key its partners must match.  Finding a partner is then
a lookup instead of a walk of ``i_mmap``, with the same outcome:

* hugetlb (Ken Chen's rule): any VMA of the same file with ``VM_MAYSHARE``, the same flags
  ignoring ``VM_LOCKED``, covering its whole 1 GiB window, that maps the same file offset at the
  same position inside the window (virtual addresses may differ);
* McCracken's shared PTE tables: a VMA of the same file with the same ``vm_start``, ``vm_end``,
  ``vm_pgoff`` and READ/WRITE/EXEC/SHARED flags, whose table covers the same 2 MiB span (PMD
  tables and 1 GiB spans for the 2005 version).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..arch import PAGE_SHIFT, mk_shared
from .pagewalk import PMD, PTE, account_alloc, account_free, account_mm
from .vma import VM_EXEC, VM_LOCKED, VM_MAYSHARE, VM_READ, VM_SHARED, VM_WRITE

if TYPE_CHECKING:
    from .kernel import Kernel
    from .mm_struct import MM
    from .vma import VMA

_PARTNER_FLAGS = VM_READ | VM_WRITE | VM_EXEC | VM_SHARED


def mk_shared_entry(k: Kernel, sid: int | np.ndarray) -> int | np.ndarray:
    """Directory entries pointing at shared tables ``sid`` (each takes a storage reference)."""
    k.shared.get(sid)
    return mk_shared(sid)


# --- the registry of shareable tables ----------------------------------------------------------

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


# --- PMD tables (hugetlb sharing; McCracken 2005) ----------------------------------------------

def _pmd_key(k: Kernel, vma: VMA) -> tuple | None:
    """The partner key of ``vma``'s PMD tables, or None if they are not to be shared."""
    if vma.is_hugetlb:
        if not (k.policy.hugetlb_pmd_share and vma.vm_flags & VM_MAYSHARE):
            return None
        phase = (vma.vm_start - (vma.vm_pgoff << PAGE_SHIFT)) % k.geom.pmd.span
        return ("hugetlb-pmd", vma.obj.id, vma.vm_flags & ~VM_LOCKED, phase)
    if not k.policy.pmd_shareable(vma):
        return None
    return ("pmd", vma.obj.id, vma.vm_start, vma.vm_end, vma.vm_pgoff, vma.vm_flags & _PARTNER_FLAGS)


def _pmd_slots(k: Kernel, vma: VMA, bases: np.ndarray) -> np.ndarray:
    """Registry slot of each 1 GiB window: the file's window for hugetlb (partners may map it at
    another address), the window's place in the VMA for McCracken (partners have the same VMA)."""
    size = k.geom.pmd.span
    if vma.is_hugetlb:
        return (((bases - vma.vm_start) >> PAGE_SHIFT) + vma.vm_pgoff) // (size >> PAGE_SHIFT)
    return (bases - vma.vm_start) // size


def pmd_alloc(k: Kernel, mm: MM, vma: VMA, bases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Give ``mm`` PMD tables for the 1 GiB windows at ``bases`` where they are to be shared ones.

    Returns ``(sids, attached)``: the shared table of each window (0 where the window's table is to
    be an ordinary one) and whether it is a partner's (``huge_pmd_share``) rather than new.  Only a
    window the VMA covers whole may share.
    """
    n = len(bases)
    sids = np.zeros(n, dtype=np.int64)
    attached = np.zeros(n, dtype=bool)
    key = _pmd_key(k, vma)
    size = k.geom.pmd.span
    whole = (bases >= vma.vm_start) & (bases + size <= vma.vm_end)
    if key is None or not whole.any():
        return sids, attached
    idx = np.flatnonzero(whole)
    slots = _pmd_slots(k, vma, bases[idx])
    found = _lookup(k, key, slots)
    if vma.is_hugetlb or k.policy.share_at_fault:
        hit = found != 0
        attach(k, mm, PMD, found[hit])
        sids[idx[hit]] = found[hit]
        attached[idx[hit]] = True
    todo = idx[sids[idx] == 0]
    if len(todo):
        cids = np.array([k.stores[PMD].new() for _ in range(len(todo))], dtype=np.int64)
        new = k.shared.new(PMD, cids, mm.id)
        account_alloc(k, mm, PMD, len(todo))
        mm.pmd_boxes.update(new.tolist())
        sids[todo] = new
        _register(k, key, _pmd_slots(k, vma, bases[todo]), new)
    return sids, attached


def attach(k: Kernel, mm: MM, lvl: int, sids: np.ndarray) -> None:
    """``mm`` starts using the shared tables ``sids`` (the caller installs the entries)."""
    if len(sids) == 0:
        return
    np.add.at(k.shared.users, sids, 1)
    account_mm(mm, lvl, len(sids))
    mm.nr_shared += len(sids)
    if lvl == PMD:
        mm.pmd_boxes.update(sids.tolist())
    k.events.add("pt_shared", len(sids))


# --- PTE tables (McCracken) ------------------------------------------------------------------

def pte_alloc(k: Kernel, mm: MM, vma: VMA, pmd_sid: int, span_addrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shared PTE tables for the spans at ``span_addrs`` that ``vma`` may share (0 elsewhere).

    Inside a shared PMD table the PTE tables are shared with it and are not tables of their own.
    Returns ``(sids, attached)``.
    """
    n = len(span_addrs)
    sids = np.zeros(n, dtype=np.int64)
    attached = np.zeros(n, dtype=bool)
    if pmd_sid or not k.policy.pte_shareable(vma):
        return sids, attached
    span = k.geom.pte.span
    full = (span_addrs >= vma.vm_start) & (span_addrs + span <= vma.vm_end)
    if not full.any():
        return sids, attached
    key = ("pte", vma.obj.id, vma.vm_start, vma.vm_end, vma.vm_pgoff, vma.vm_flags & _PARTNER_FLAGS)
    first = -(-vma.vm_start // span) * span
    slots = (span_addrs[full] - first) // span
    found = _lookup(k, key, slots)
    if k.policy.share_at_fault and found.any():
        hit = found != 0
        attach(k, mm, PTE, found[hit])
        idx = np.flatnonzero(full)[hit]
        sids[idx] = found[hit]
        attached[idx] = True
    todo = np.flatnonzero(full)[sids[full] == 0]
    if len(todo):
        store = k.stores[PTE]
        cids = store.new(np.zeros((len(todo), 512), bool), np.zeros((len(todo), 512), bool), None)
        new = k.shared.new(PTE, cids, mm.id)
        account_alloc(k, mm, PTE, len(todo))
        sids[todo] = new
        _register(k, key, (span_addrs[todo] - first) // span, new)
    return sids, attached


def account_pte_tables(k: Kernel, mm: MM, pmd_sid: int, n: int) -> None:
    """``n`` new PTE tables, in ``mm``'s own PMD table or in the shared PMD table ``pmd_sid``."""
    if not pmd_sid:
        account_alloc(k, mm, PTE, n)
        return
    k.frames.alloc_pgtables(n)
    k.events.add("pgtable_alloc", n)
    k.shared.children[pmd_sid] += n


# --- letting go ------------------------------------------------------------------------------

def _let_go(k: Kernel, mm: MM, lvl: int, sid: int) -> None:
    """``mm``'s own bookkeeping when it stops using ``sid``: VmSHPT, if it attached the table rather
    than allocated it, and its list of shared PMD tables."""
    if int(k.shared.owner[sid]) == mm.id:
        k.shared.owner[sid] = 0
    else:
        mm.nr_shared -= 1
    if lvl == PMD:
        mm.pmd_boxes.discard(sid)


def release(k: Kernel, mm: MM, lvl: int, sid: int) -> bool:
    """``mm`` stops using shared table ``sid`` (the caller clears its entry).

    With other users left this is an unshare: the table stays, every CPU's TLB is flushed at the
    end of the operation (``Kernel.tlb_finish``), and the mm refaults into a table of its own.
    Returns False when ``mm`` was the last user: the caller then zaps and frees the table as its own.
    """
    users = int(k.shared.users[sid])
    if users <= 1:
        return False
    k.shared.users[sid] = users - 1
    account_mm(mm, lvl, -1)
    _let_go(k, mm, lvl, sid)
    k.events.add("pt_unshared")
    k.flush_all_pending = True
    return True


def free_last(k: Kernel, mm: MM, lvl: int, sid: int) -> None:
    """The last user frees shared table ``sid`` (after zapping it)."""
    k.shared.users[sid] = 0
    unregister(k, sid)
    _let_go(k, mm, lvl, sid)
    if lvl == PMD:
        children = int(k.shared.children[sid])
        if children:
            k.frames.free_pgtables(children)
            k.events.add("pgtable_free", children)
            k.shared.children[sid] = 0
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
    if lvl == PMD:
        mm.nr_ptes += int(k.shared.children[sid])
        k.shared.children[sid] = 0
    return cid


def attached_tables(k: Kernel, mm: MM) -> int:
    """Tables ``mm`` uses but did not allocate (VmSHPT): those it attached, and the PTE tables inside
    shared PMD tables it attached."""
    inside = sum(int(k.shared.children[sid]) for sid in mm.pmd_boxes if int(k.shared.owner[sid]) != mm.id)
    return mm.nr_shared + inside


def vmpte_tables(k: Kernel, mm: MM) -> int:
    """Tables counted in ``mm``'s VmPTE, the PTE tables inside shared PMD tables included."""
    inside = int(k.shared.children[list(mm.pmd_boxes)].sum()) if mm.pmd_boxes else 0
    return mm.nr_ptes + mm.nr_pmds + mm.nr_puds + inside
