"""The fault path: models ``handle_mm_fault()`` (mm/memory.c) and ``hugetlb_fault()`` (mm/hugetlb.c).

A ``touch`` hands a whole run of accesses in one VMA to :func:`handle_mm_fault_range`, which walks
the page tables once and resolves the faults of every PTE table under one PMD table in a single
vectorised step (:class:`_PteBatch`).  The outcome is the one Linux reaches taking the faults one
at a time, in order:

* anonymous read of an empty PTE: the zero page, read-only (``do_anonymous_page``);
* anonymous write: a new zeroed page; on a write-protected page, reuse it when this is its only
  mapping, copy it otherwise (``do_wp_page``);
* read of a file or shmem page: ``do_read_fault`` maps the faulting page and, with fault-around,
  every page already in the page cache in the same ``fault_around_bytes`` window (16 pages,
  aligned, clamped to the VMA and the PTE table, the window shifted at the VMA's start exactly as
  ``do_fault_around`` shifts it);
* write to a shared file mapping: ``do_shared_fault`` (one page, no fault-around), or
  ``page_mkwrite`` on a write-protected one;
* write to a private file mapping: ``do_cow_fault`` / ``wp_page_copy``;
* hugetlb: one 2 MiB page per fault, and PMD-table sharing (``huge_pmd_share``) where the policy
  allows it.

Deliberate shortcut for speed: when a run of whole PMD tables would see the same transition
(a read of pages all already in the page cache, or of anonymous memory), the transition is
computed once and the resulting table contents shared; counters are scaled by the number of
tables.  This is exact: no frame is allocated and every entry maps its page implicitly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..arch import (
    E_LEAF,
    E_NONE,
    E_SHARED,
    E_TABLE,
    PAGE_SHIFT,
    PTRS_PER_TABLE,
    entry_tag,
    entry_value,
    leaf_explicit,
    leaf_write,
    mk_leaf,
    mk_table,
)
from .access import Accesses, spans_touched, write_stamp
from .frames import PG_ANON, PG_EXCLUSIVE, PG_HUGE, ZERO_PFN
from .pagewalk import PMD, PTE, PUD, account_alloc, pud_tables
from .vma import VM_WRITE, VMA, AnonVma

if TYPE_CHECKING:
    from .kernel import Kernel
    from .mm_struct import Task


def handle_mm_fault_range(k: Kernel, task: Task, vma: VMA, acc: Accesses, write: bool) -> None:
    """Take the faults of ``acc`` (all inside ``vma``, access allowed) in order."""
    if len(acc) == 0:
        return
    pud_span_shift = k.geom.pud.span.bit_length() - 1
    for lo, hi in spans_touched(acc, pud_span_shift):
        for pud_cid, a, b in pud_tables(k, task.mm, lo, hi, alloc=True):
            sub = acc.within(a, b)
            if len(sub):
                _fault_pud_table(k, task, vma, pud_cid, sub, write)


# --- the PUD level: one entry per PMD table (1 GiB) ---------------------------------------------

def _regions(acc: Accesses, shift: int) -> list[tuple[int, Accesses]]:
    """Split accesses by 2**shift-aligned region, in address order; order kept within a region."""
    size = 1 << shift
    if acc.addrs is None:
        out = []
        lo, hi = acc.bounds()
        base = lo & ~(size - 1)
        while base < hi:
            sub = acc.within(base, base + size)
            if len(sub):
                out.append((base, sub))
            base += size
        return out
    keys = acc.addrs >> shift
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    cuts = np.flatnonzero(np.diff(sorted_keys)) + 1
    return [(int(sorted_keys[g[0]]) << shift, Accesses.explicit(acc.addrs[order[g]]))
            for g in np.split(np.arange(len(order)), cuts)]


def _fault_pud_table(k: Kernel, task: Task, vma: VMA, pud_cid: int, acc: Accesses, write: bool) -> None:
    pmd_shift = k.geom.pmd.span.bit_length() - 1
    regions = _regions(acc, pmd_shift)
    done: set[int] = set()
    for members in _uniform_groups(k, vma, pud_cid, regions, write):
        _fault_group(k, task, vma, pud_cid, [regions[m] for m in members], write)
        done.update(members)
    for n, (base, sub) in enumerate(regions):
        if n not in done:
            _fault_pmd_table(k, task, vma, pud_cid, base, sub, write)


def _uniform_groups(k: Kernel, vma: VMA, pud_cid: int, regions: list[tuple[int, Accesses]],
                    write: bool) -> list[list[int]]:
    """Runs of whole PMD tables whose transition is the same; see the module docstring."""
    if write or len(regions) < 2 or not regions[0][1].is_progression:
        return []
    if vma.obj is not None and vma.is_hugetlb and k.policy.hugetlb_pmd_share:
        return []
    if k.policy.pte_shareable(vma) or k.policy.pmd_shareable(vma):
        return []
    span = k.geom.pmd.span
    stride = regions[0][1].stride
    if span % stride:
        return []
    pud = k.stores[PUD]
    groups: dict[tuple[int, int], list[int]] = {}
    for n, (base, sub) in enumerate(regions):
        if sub.start != base or sub.end != base + span or base < vma.vm_start or base + span > vma.vm_end:
            continue
        if vma.obj is not None:
            lo = vma.linear_page_index(base) // (vma.obj.page_size >> PAGE_SHIFT)
            hi = lo + span // vma.obj.page_size
            if not vma.obj.fully_cached(lo, hi):
                continue
        entry = int(pud.entries[pud_cid, k.geom.index(k.geom.pud, base)])
        if entry_tag(entry) == E_SHARED:
            continue
        groups.setdefault((entry, stride), []).append(n)
    return [members for members in groups.values() if len(members) > 1]


class _Tally:
    """Counters a fault run changes, so that a transition computed once can be charged n times."""

    def __init__(self, k: Kernel, task: Task) -> None:
        self.k, self.task = k, task
        self.start = self._read()

    def _read(self) -> tuple:
        mm = self.task.mm
        return (self.task.minflt, mm.nr_ptes, mm.nr_pmds, self.k.frames.nr_pagetables,
                self.k.events.snapshot())

    def charge_again(self, times: int) -> None:
        now = self._read()
        mm = self.task.mm
        d = [b - a for a, b in zip(self.start, now, strict=True)]
        self.task.minflt += d[0] * times
        mm.nr_ptes += d[1] * times
        mm.nr_pmds += d[2] * times
        if d[3]:
            self.k.frames.alloc_pgtables(d[3] * times)
        self.k.events.values += d[4] * times


def _fault_group(k: Kernel, task: Task, vma: VMA, pud_cid: int, regions: list[tuple[int, Accesses]],
                 write: bool) -> None:
    pud = k.stores[PUD]
    pmd = k.stores[PMD]
    rep_base, rep_acc = regions[0]
    tally = _Tally(k, task)
    _fault_pmd_table(k, task, vma, pud_cid, rep_base, rep_acc, write)
    others = regions[1:]
    tally.charge_again(len(others))
    result = int(pud.entries[pud_cid, k.geom.index(k.geom.pud, rep_base)])
    for base, _sub in others:
        i = k.geom.index(k.geom.pud, base)
        old = int(pud.entries[pud_cid, i])
        if entry_tag(old) == E_TABLE:
            pmd.put(int(entry_value(old)))
        pud.entries[pud_cid, i] = result
    pmd.get(int(entry_value(result)), len(others))


def _fault_pmd_table(k: Kernel, task: Task, vma: VMA, pud_cid: int, base: int, acc: Accesses,
                     write: bool) -> None:
    """Resolve the PMD table of one 1 GiB region (allocating or attaching it), then its faults."""
    from . import ptshare

    pud = k.stores[PUD]
    pmd = k.stores[PMD]
    i = k.geom.index(k.geom.pud, base)
    entry = int(pud.entries[pud_cid, i])
    tag = entry_tag(entry)
    attached = False
    sid = 0
    if tag == E_NONE:
        sid, attached = ptshare.pmd_alloc(k, task.mm, vma, base)
        if sid:
            pud.entries[pud_cid, i] = ptshare.mk_shared_entry(k, sid)
        else:
            cid = pmd.new()
            pud.entries[pud_cid, i] = mk_table(cid)
            account_alloc(k, task.mm, PMD, 1)
    elif tag == E_SHARED:
        sid = int(entry_value(entry))
    if sid:
        cid = k.shared.cow_content(sid)
    elif tag != E_NONE:
        cid = pmd.cow(int(entry_value(entry)))
        pud.entries[pud_cid, i] = mk_table(cid)
    else:
        cid = int(entry_value(pud.entries[pud_cid, i]))
    if vma.is_hugetlb:
        _fault_huge_leaves(k, task, vma, cid, base, acc, write, attached)
    else:
        _PteBatch(k, task, vma, cid, sid, base, acc, write, attached).run()


# --- hugetlb: 2 MiB leaves in the PMD table ----------------------------------------------------

def _fault_huge_leaves(k: Kernel, task: Task, vma: VMA, pmd_cid: int, base: int, acc: Accesses,
                       write: bool, attached: bool) -> None:
    """Models hugetlb_fault() -> hugetlb_no_page() / hugetlb_wp() for each 2 MiB page, in order."""
    obj = vma.obj
    entries = k.stores[PMD].entries[pmd_cid]
    slots_all = (acc.materialize() - base) >> k.geom.pmd.shift
    slots, first = np.unique(slots_all, return_index=True)
    slots = slots[np.argsort(first)]
    e = entries[slots]
    present = entry_tag(e) == E_LEAF
    spurious = 1 if attached and present[0] else 0
    hidx = (vma.linear_page_index(base) >> 9) + slots
    faults = spurious
    frames = k.frames
    new_e = e.copy()
    if vma.is_shared:
        absent = ~present
        if absent.any():
            cached = obj.find(hidx[absent])
            need = cached == 0
            if need.any():
                pfns = frames.alloc(int(need.sum()), obj.page_flags, obj.initial_stamps(hidx[absent][need]))
                obj.add(hidx[absent][need], pfns)
                k.events.add("hpage_alloc", int(need.sum()))
                k.events.add("page_zeroed", 512 * int(need.sum()))
            writable = np.full(int(absent.sum()), bool(vma.vm_flags & VM_WRITE))
            new_e[absent] = mk_leaf(writable, None)
            faults += int(absent.sum())
        if write:
            upgrade = present & ~leaf_write(e)
            new_e[upgrade] = mk_leaf(np.ones(int(upgrade.sum()), bool), None)
            faults += int(upgrade.sum())
    else:
        faults += _huge_private(k, vma, hidx, e, present, new_e, write)
    k.events.add("fault_hugetlb", faults - spurious)
    k.events.add("fault_spurious", spurious)
    _count_faults(k, task, faults)
    entries[slots] = new_e
    if write:
        pfns = np.where(leaf_explicit(new_e), entry_value(new_e), obj.find(hidx))
        frames.stamp[pfns] = write_stamp(k.write_seq, base + (slots << k.geom.pmd.shift))


def _huge_private(k: Kernel, vma: VMA, hidx: np.ndarray, e: np.ndarray, present: np.ndarray,
                  new_e: np.ndarray, write: bool) -> int:
    """Private hugetlb mapping: page-cache pages read-only, anonymous huge pages otherwise."""
    frames = k.frames
    obj = vma.obj
    explicit = present & leaf_explicit(e)
    pfn = np.where(explicit, entry_value(e), 0)
    faults = 0
    absent = ~present
    cached = np.zeros(len(e), dtype=np.int64)
    cached[absent] = obj.find(hidx[absent])
    if write:
        reuse = explicit & ~leaf_write(e)
        reuse &= frames.mapcount[pfn] == 1
        copy_anon = explicit & ~leaf_write(e) & ~reuse
        copy_file = present & ~explicit & ~leaf_write(e)
        fresh = absent
        new_pages = copy_anon | copy_file | fresh
        faults = int((new_pages | reuse).sum())
        if new_pages.any():
            _anon_vma_prepare(vma)
            src = np.where(copy_anon, pfn, cached)
            if copy_file.any():
                src[copy_file] = obj.find(hidx[copy_file])
            stamps = np.where(src[new_pages] > 0, frames.stamp[src[new_pages]], 0)
            got = frames.alloc(int(new_pages.sum()), PG_ANON | PG_HUGE | PG_EXCLUSIVE, stamps)
            frames.mapcount[got] = 1
            old = pfn[copy_anon]
            frames.mapcount[old] -= 1
            pfn[new_pages] = got
            k.events.add("hpage_alloc", len(got))
        frames.flags[pfn[reuse]] |= PG_EXCLUSIVE
        wr = reuse | new_pages
        new_e[wr] = mk_leaf(np.ones(int(wr.sum()), bool), pfn[wr])
    elif absent.any():
        faults = int(absent.sum())
        from_cache = absent & (cached != 0)
        new_e[from_cache] = mk_leaf(np.zeros(int(from_cache.sum()), bool), None)
        fresh = absent & (cached == 0)
        if fresh.any():
            _anon_vma_prepare(vma)
            got = frames.alloc(int(fresh.sum()), PG_ANON | PG_HUGE | PG_EXCLUSIVE, 0)
            frames.mapcount[got] = 1
            new_e[fresh] = mk_leaf(np.zeros(len(got), bool), got)
            k.events.add("hpage_alloc", len(got))
    return faults


# --- the PMD level: PTE tables, one vectorised batch per PMD table -------------------------------

class _PteBatch:
    """The faults of one touch inside one PMD table: every PTE table it hits, at once."""

    def __init__(self, k: Kernel, task: Task, vma: VMA, pmd_cid: int, pmd_sid: int, base: int,
                 acc: Accesses, write: bool, pmd_attached: bool) -> None:
        self.k, self.task, self.vma = k, task, vma
        self.pmd_cid, self.pmd_sid = pmd_cid, pmd_sid
        self.write = write
        addrs = acc.materialize()
        self.addrs = addrs
        self.progression = acc.is_progression
        span_shift = k.geom.pte.span.bit_length() - 1
        span = (addrs - base) >> span_shift
        self.js, self.inv = np.unique(span, return_inverse=True)
        self.ent = (addrs >> PAGE_SHIFT) & (PTRS_PER_TABLE - 1)
        self.span_addr = base + (self.js << span_shift)
        self.vs = np.clip((vma.vm_start - self.span_addr) >> PAGE_SHIFT, 0, PTRS_PER_TABLE)
        self.ve = np.clip((vma.vm_end - self.span_addr) >> PAGE_SHIFT, 0, PTRS_PER_TABLE)
        self.pmd_attached = pmd_attached

    def run(self) -> None:
        k = self.k
        self._resolve_tables()
        self.P, self.W, self.PFN = k.stores[PTE].load(self.cids)
        P0, W0, PFN0 = self.P.copy(), self.W.copy(), self.PFN.copy()
        faults = self._spurious()
        if self.vma.is_anonymous:
            faults += self._anon_write() if self.write else self._anon_read()
        elif self.write:
            faults += self._file_write_shared() if self.vma.is_shared else self._file_write_private()
        else:
            faults += self._file_read()
        _count_faults(k, self.task, faults)
        changed = (self.P != P0).any(axis=1) | (self.W != W0).any(axis=1) | (self.PFN != PFN0).any(axis=1)
        self._store(changed)

    # tables ---------------------------------------------------------------------------------

    def _resolve_tables(self) -> None:
        from . import ptshare

        k = self.k
        entries = k.stores[PMD].entries[self.pmd_cid]
        e = entries[self.js]
        tag = entry_tag(e)
        self.attached = np.zeros(len(self.js), dtype=bool)
        none = tag == E_NONE
        if none.any():
            sids, attached = ptshare.pte_alloc(k, self.task.mm, self.vma, self.pmd_sid, self.span_addr[none])
            boxed = sids != 0
            if boxed.any():
                entries[self.js[none][boxed]] = [ptshare.mk_shared_entry(k, s) for s in sids[boxed]]
                self.attached[np.flatnonzero(none)[boxed]] = attached[boxed]
            plain = np.flatnonzero(none)[~boxed]
            if len(plain):
                ids = k.stores[PTE].new(np.zeros((len(plain), PTRS_PER_TABLE), bool),
                                        np.zeros((len(plain), PTRS_PER_TABLE), bool), None)
                entries[self.js[plain]] = mk_table(ids)
                ptshare.account_pte_tables(k, self.task.mm, self.pmd_sid, len(plain))
            e = entries[self.js]
            tag = entry_tag(e)
        self.entry_tag = tag
        self.sids = np.where(tag == E_SHARED, entry_value(e), 0)
        self.cids = np.where(tag == E_SHARED, k.shared.content[self.sids], entry_value(e))

    def _spurious(self) -> int:
        """A fault on a span whose table was just attached and already maps the first page accessed."""
        if not self.attached.any():
            return 0
        first = np.unique(self.inv, return_index=True)[1]
        hit = self.attached & self.P[np.arange(len(self.js)), self.ent[first]]
        n = int(hit.sum())
        self.k.events.add("fault_spurious", n)
        return n

    def _store(self, changed: np.ndarray) -> None:
        k = self.k
        pte = k.stores[PTE]
        entries = k.stores[PMD].entries[self.pmd_cid]
        own = changed & (self.sids == 0)
        if own.any():
            old = self.cids[own]
            new = pte.cow(old)
            pte.store(new, self.P[own], self.W[own], self.PFN[own])
            moved = new != old
            if moved.any():
                entries[self.js[own][moved]] = mk_table(new[moved])
        for n in np.flatnonzero(changed & (self.sids != 0)).tolist():
            cid = k.shared.cow_content(int(self.sids[n]))
            pte.store(np.array([cid]), self.P[n:n + 1], self.W[n:n + 1], self.PFN[n:n + 1])

    # helpers --------------------------------------------------------------------------------

    def _distinct(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Distinct (span, entry) pairs accessed, in order of first access, and their addresses."""
        if self.progression:
            return self.inv, self.ent, self.addrs
        key = self.inv * PTRS_PER_TABLE + self.ent
        _, first = np.unique(key, return_index=True)
        first.sort()
        return self.inv[first], self.ent[first], self.addrs[first]

    def _file_index(self, sp: np.ndarray, ent: np.ndarray) -> np.ndarray:
        vma = self.vma
        return ((self.span_addr[sp] - vma.vm_start) >> PAGE_SHIFT) + vma.vm_pgoff + ent

    def _cache_fill(self, sp: np.ndarray, ent: np.ndarray) -> np.ndarray:
        """Bring the file pages at (sp, ent) into the page cache; returns their frames."""
        obj = self.vma.obj
        idx = self._file_index(sp, ent)
        pfns = obj.find(idx)
        missing = pfns == 0
        if missing.any():
            got = self.k.frames.alloc(int(missing.sum()), obj.page_flags, obj.initial_stamps(idx[missing]))
            obj.add(idx[missing], got)
            pfns[missing] = got
            self.k.events.add("page_alloc", len(got))
            if obj.is_shmem:
                self.k.events.add("page_zeroed", len(got))
        return pfns

    def _alloc_anon(self, n: int, stamps: np.ndarray | int = 0) -> np.ndarray:
        _anon_vma_prepare(self.vma)
        pfns = self.k.frames.alloc(n, PG_ANON | PG_EXCLUSIVE, stamps)
        self.k.frames.mapcount[pfns] = 1
        self.k.events.add("page_alloc", n)
        self.k.events.add("page_zeroed", n)
        return pfns

    # anonymous memory -----------------------------------------------------------------------

    def _anon_read(self) -> int:
        miss = ~self.P[self.inv, self.ent]
        if not miss.any():
            return 0
        key = np.unique(self.inv[miss] * PTRS_PER_TABLE + self.ent[miss])
        sp, ent = key // PTRS_PER_TABLE, key % PTRS_PER_TABLE
        self.P[sp, ent] = True
        self.W[sp, ent] = False
        self.PFN[sp, ent] = ZERO_PFN
        self.k.events.add("fault_zero", len(key))
        return len(key)

    def _stamp(self, pfns: np.ndarray, addrs: np.ndarray) -> None:
        """What the write leaves in the pages it reached."""
        self.k.frames.stamp[pfns] = write_stamp(self.k.write_seq, addrs)

    def _anon_write(self) -> int:
        k = self.k
        sp, ent, addrs = self._distinct()
        present, writable, pfn = self.P[sp, ent], self.W[sp, ent], self.PFN[sp, ent]
        absent = ~present
        ro = present & ~writable
        zero = ro & (pfn == ZERO_PFN)
        anon = ro & (pfn > ZERO_PFN)
        reuse = anon & (k.frames.mapcount[np.where(anon, pfn, 0)] == 1)
        copy = anon & ~reuse
        fresh = absent | zero | copy
        if fresh.any():
            stamps = np.where(copy[fresh], k.frames.stamp[pfn[fresh]], 0)
            got = self._alloc_anon(int(fresh.sum()), stamps)
            k.frames.mapcount[pfn[copy]] -= 1
            pfn = pfn.copy()
            pfn[fresh] = got
        k.frames.flags[pfn[reuse]] |= PG_EXCLUSIVE
        self.P[sp, ent] = True
        self.W[sp, ent] = True
        self.PFN[sp, ent] = pfn
        self._stamp(pfn, addrs)
        k.events.add("fault_anon", int(absent.sum()))
        k.events.add("fault_wp_copy", int((zero | copy).sum()))
        k.events.add("fault_wp_reuse", int(reuse.sum()))
        return int((absent | ro).sum())

    # file and shmem mappings ----------------------------------------------------------------

    def _file_read(self) -> int:
        """do_read_fault() with do_fault_around(), in access order."""
        k, vma = self.k, self.vma
        nr = k.policy.fault_around_pages
        miss = ~self.P[self.inv, self.ent]
        if not miss.any():
            return 0
        key = self.inv[miss] * PTRS_PER_TABLE + self.ent[miss]
        _, first = np.unique(key, return_index=True)
        first.sort()
        fsp, fent = self.inv[miss][first], self.ent[miss][first]
        n = len(self.js)
        col = np.arange(PTRS_PER_TABLE)
        in_vma = (col >= self.vs[:, None]) & (col < self.ve[:, None])
        idx = ((self.span_addr - vma.vm_start) >> PAGE_SHIFT)[:, None] + vma.vm_pgoff + col
        valid = in_vma & (idx >= 0) & (idx < vma.obj.nr_pages)
        cached = np.zeros((n, PTRS_PER_TABLE), dtype=bool)
        cached[valid] = vma.obj.pages[idx[valid]] != 0
        before = self.P.copy()
        mapped_pte = vma.pte_writable()
        if nr <= 1:
            faults = len(fsp)
            self._map_file(fsp, fent, cached)
        else:
            align_up = -(-self.vs // nr) * nr
            head = (self.vs[fsp] % nr != 0) & (fent < (align_up + nr)[fsp])
            faults = self._fault_around_blocks(fsp[~head], fent[~head], cached, in_vma, nr)
            faults += self._fault_around_exact(fsp[head], fent[head], cached, nr)
        newly = self.P & ~before
        self.W[newly] = mapped_pte
        self.PFN[newly] = 0
        k.events.add("fault_file", faults)
        k.events.add("fault_around_ptes", int(newly.sum()) - faults)
        return faults

    def _map_file(self, sp: np.ndarray, ent: np.ndarray, cached: np.ndarray) -> None:
        """Map the faulting pages themselves, reading uncached ones into the page cache."""
        if len(sp) == 0:
            return
        uncached = ~cached[sp, ent]
        if uncached.any():
            self._cache_fill(sp[uncached], ent[uncached])
            cached[sp[uncached], ent[uncached]] = True
        self.P[sp, ent] = True

    def _fault_around_blocks(self, sp: np.ndarray, ent: np.ndarray, cached: np.ndarray,
                             in_vma: np.ndarray, nr: int) -> int:
        """Faults on aligned fault-around windows: the first miss in a window maps every cached
        page of it; later misses in the window fault only on pages that were not cached."""
        if len(sp) == 0:
            return 0
        blocks = PTRS_PER_TABLE // nr
        bkey = sp * blocks + ent // nr
        ukeys, first = np.unique(bkey, return_index=True)
        first_uncached = ~cached[sp[first], ent[first]]
        uncached = ~cached[sp, ent]
        faults = len(ukeys) + int(uncached.sum()) - int(first_uncached.sum())
        hit = np.zeros((len(self.js), blocks), dtype=bool)
        hit[ukeys // blocks, ukeys % blocks] = True
        window = np.repeat(hit, nr, axis=1) & cached & in_vma
        self.P |= window
        self._map_file(sp, ent, cached)
        return faults

    def _fault_around_exact(self, sp: np.ndarray, ent: np.ndarray, cached: np.ndarray, nr: int) -> int:
        """The windows at the VMA's start, which do_fault_around shifts to begin at vm_start."""
        faults = 0
        for j, e in zip(sp.tolist(), ent.tolist(), strict=True):
            if self.P[j, e]:
                continue
            faults += 1
            lo = max(e - e % nr, int(self.vs[j]))
            hi = min(lo + nr, PTRS_PER_TABLE, int(self.ve[j]))
            self.P[j, lo:hi] |= cached[j, lo:hi]
            if not self.P[j, e]:
                self._map_file(np.array([j]), np.array([e]), cached)
        return faults

    def _file_write_shared(self) -> int:
        """do_shared_fault() for absent pages, page_mkwrite for write-protected ones."""
        sp, ent, addrs = self._distinct()
        present, writable = self.P[sp, ent], self.W[sp, ent]
        absent = ~present
        self._stamp(self._cache_fill(sp, ent), addrs)
        self.P[sp, ent] = True
        self.W[sp, ent] = True
        self.PFN[sp, ent] = 0
        self.k.events.add("fault_shared_write", int(absent.sum()))
        self.k.events.add("fault_wp_shared", int((present & ~writable).sum()))
        return int((~(present & writable)).sum())

    def _file_write_private(self) -> int:
        """do_cow_fault() for absent pages, do_wp_page() for write-protected ones."""
        k = self.k
        sp, ent, addrs = self._distinct()
        present, writable, pfn = self.P[sp, ent], self.W[sp, ent], self.PFN[sp, ent]
        explicit = pfn > ZERO_PFN
        ro = present & ~writable
        reuse = ro & explicit & (k.frames.mapcount[np.where(explicit, pfn, 0)] == 1)
        copy_anon = ro & explicit & ~reuse
        copy_file = ro & ~explicit
        absent = ~present
        fresh = copy_anon | copy_file | absent
        if fresh.any():
            src = pfn.copy()
            from_file = copy_file | absent
            if from_file.any():
                src[from_file] = self._cache_fill(sp[from_file], ent[from_file])
            got = self._alloc_anon(int(fresh.sum()), k.frames.stamp[src[fresh]])
            k.frames.mapcount[pfn[copy_anon]] -= 1
            pfn = pfn.copy()
            pfn[fresh] = got
        k.frames.flags[pfn[reuse]] |= PG_EXCLUSIVE
        self.P[sp, ent] = True
        self.W[sp, ent] = True
        self.PFN[sp, ent] = pfn
        self._stamp(pfn, addrs)
        k.events.add("fault_cow", int(absent.sum()))
        k.events.add("fault_wp_copy", int((copy_anon | copy_file).sum()))
        k.events.add("fault_wp_reuse", int(reuse.sum()))
        return int((absent | ro).sum())


# --- shared helpers ----------------------------------------------------------------------------

def _anon_vma_prepare(vma: VMA) -> None:
    """Models anon_vma_prepare(): the first anonymous page of a VMA gives it an anon_vma."""
    if vma.anon_vma is None:
        vma.anon_vma = AnonVma()


def _count_faults(k: Kernel, task: Task, n: int) -> None:
    task.minflt += n
    k.events.add("fault", n)
