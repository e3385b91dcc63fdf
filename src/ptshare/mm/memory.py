"""The fault path: models ``handle_mm_fault()`` (mm/memory.c) for a whole run of accesses.

A ``touch`` hands every access it makes in one VMA to :func:`handle_mm_fault_range`, which walks
the page tables once and reaches the outcome Linux reaches taking the faults one at a time, in
order.  The page-level rules are in :mod:`ptshare.mm.pte_fault` (PTE tables) and
:mod:`ptshare.mm.hugetlb` (2 MiB leaves); this module finds and allocates the tables:

* the PMD table of each 1 GiB window (``pmd_alloc``, or ``huge_pmd_share``/McCracken's sharing);
* the PTE table of each 2 MiB span (``pte_alloc``, or McCracken's ``pt_share_pte``), in one
  vectorised step over every span the touch reaches;
* only the spans where some access misses go through the page-level rules.

Deliberate shortcuts for speed, both exact:

* a run of whole tables (PMD tables, or PTE tables) that would see the same transition -- a read
  of anonymous memory, or of file pages all already in the page cache, starting from the same
  contents -- is computed once and the resulting contents shared, with the counters scaled;
* a table whose entries all already allow the access is skipped without looking at its pages;
* a read of a whole 1 GiB window whose tables partners hold complete attaches them in one step per
  window (:func:`_attach_whole_windows`), without building a row per PTE table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..arch import (
    E_NONE,
    E_SHARED,
    E_TABLE,
    PAGE_SHIFT,
    PAGE_SIZE,
    PTRS_PER_TABLE,
    bitmap_pack,
    entry_tag,
    entry_value,
    mk_shared,
    mk_table,
    range_bits,
)
from . import huge_memory, ptshare
from .access import Accesses, spans_touched
from .hugetlb import hugetlb_fault_regions
from .pagewalk import PMD, PTE, PUD, Shared, Table, account_alloc, entry_tables, shared_entry, walk
from .pgtable import COW
from .pte_fault import PteFaults

if TYPE_CHECKING:
    from .kernel import Kernel
    from .mm_struct import Task
    from .vma import VMA

CHUNK = 512  # PTE tables resolved in one page-level step


def handle_mm_fault_range(k: Kernel, task: Task, vma: VMA, acc: Accesses, write: bool) -> None:
    """Take the faults of ``acc`` (all inside ``vma``, access allowed) in order."""
    acc = acc.first_touches()
    if len(acc) == 0:
        return
    pud_span_shift = k.geom.pud.span.bit_length() - 1
    for lo, hi in spans_touched(acc, pud_span_shift):
        for pud in walk(k, task.mm, lo, hi, PUD, alloc=True, vma=vma):
            if pud.linked:  # find_shared_vma() linked the host's table and returned VM_FAULT_NOPAGE
                _count_faults(k, task, 1)
            sub = acc.within(pud.start, pud.end)
            if len(sub):
                _fault_pud_table(k, task, vma, pud, sub, write)


def _count_faults(k: Kernel, task: Task, n: int) -> None:
    task.minflt += n
    k.events.add("fault", n)


# --- the PUD level: one entry per 1 GiB window ----------------------------------------------------

def _windows_touched(k: Kernel, acc: Accesses) -> np.ndarray:
    """The bases of the 1 GiB windows that ``acc`` reaches, in address order."""
    shift = k.geom.pmd.span.bit_length() - 1
    if acc.is_progression and acc.stride <= 1 << shift:
        lo, hi = acc.bounds()
        return np.arange(lo >> shift, ((hi - 1) >> shift) + 1, dtype=np.int64) << shift
    keys = acc.materialize() >> shift
    low = int(keys.min())
    return (np.flatnonzero(np.bincount(keys - low)) + low) << shift


def _fault_pud_table(k: Kernel, task: Task, vma: VMA, pud_table: Table, acc: Accesses, write: bool) -> None:
    if not acc.is_progression and not vma.is_hugetlb:
        _fault_pte_explicit(k, task, vma, pud_table, acc, write)
        return
    bases = _windows_touched(k, acc)
    if acc.is_progression and not write:
        if not vma.is_hugetlb:
            bases = bases[~_windows_mapped(k, pud_table, bases)]
        bases = _fault_uniform_windows(k, task, vma, pud_table, bases, acc)
    if not len(bases):
        return
    if vma.is_hugetlb:
        _count_faults(k, task, hugetlb_fault_regions(k, task, vma, pud_table, bases, acc, write))
    else:
        _fault_pte_windows(k, task, vma, pud_table, bases, acc, write)


def _windows_mapped(k: Kernel, pud_table: Table, bases: np.ndarray) -> np.ndarray:
    """Which 1 GiB windows at ``bases`` have every page present: 512 PTE tables each with all 512
    entries present, where no read can fault (a populated region read through a shared table).
    A window with a shared PTE table or a huge PMD is left to the fault path."""
    entries = k.stores[PUD].entries[pud_table.cid, (bases >> k.geom.pud.shift) & (PTRS_PER_TABLE - 1)]
    _sid, pmd_cids = entry_tables(k, entries)
    out = np.zeros(len(bases), dtype=bool)
    rows = np.flatnonzero(pmd_cids)
    if not len(rows):
        return out
    pmds = k.stores[PMD].entries[pmd_cids[rows]]
    tables = entry_tag(pmds) == E_TABLE  # a shared PTE table is looked at by the fault path
    full = k.stores[PTE].full[np.where(tables, entry_value(pmds), 0)] != 0
    out[rows] = (full & tables).all(axis=1)
    return out


def _cached_whole(vma: VMA, lo: int, hi: int) -> bool:
    """Anonymous memory, or file pages [lo, hi) of ``vma`` all in the page cache: nothing to allocate."""
    if vma.obj is None:
        return True
    per = vma.obj.page_size >> PAGE_SHIFT
    return vma.obj.fully_cached(vma.linear_page_index(lo) // per, -(-vma.linear_page_index(hi) // per))


def _fault_uniform_windows(k: Kernel, task: Task, vma: VMA, pud_table: Table, bases: np.ndarray,
                           acc: Accesses) -> np.ndarray:
    """Runs of whole 1 GiB windows whose transition is the same (see the module docstring): the
    first is faulted, the others get its PMD table contents.  Returns the windows left to fault."""
    if len(bases) < 2 or k.policy.shares(vma) or pud_table.box:
        return bases
    if (vma.is_hugetlb and k.policy.hugetlb_pmd_share) or acc.stride != PAGE_SIZE:
        return bases
    span = k.geom.pmd.span
    full = (bases >= acc.start) & (bases + span <= acc.end) & (bases >= vma.vm_start) & (bases + span <= vma.vm_end)
    if full.sum() < 2:
        return bases
    rows = np.flatnonzero(full)
    if not _cached_whole(vma, int(bases[rows[0]]), int(bases[rows[-1]]) + span):
        return bases
    pud = k.stores[PUD]
    pud_cid = pud_table.cid
    idx = (bases >> k.geom.pud.shift) & (PTRS_PER_TABLE - 1)
    entries = pud.entries[pud_cid, idx[rows]]
    rows = rows[entry_tag(entries) != E_SHARED]
    keys, inverse = np.unique(pud.entries[pud_cid, idx[rows]], return_inverse=True)
    done = np.zeros(len(bases), dtype=bool)
    for g in range(len(keys)):
        members = rows[inverse == g]
        if len(members) < 2:
            continue
        first = int(bases[members[0]])
        tally = _Tally(k, task)
        _fault_pud_table(k, task, vma, pud_table, acc.within(first, first + span), False)
        others = members[1:]
        tally.charge_again(len(others))
        result = pud.entries[pud_cid, idx[members[0]]]
        old = pud.entries[pud_cid, idx[others]]
        gone = old[entry_tag(old) == E_TABLE]
        if len(gone):
            k.stores[PMD].put(entry_value(gone))
        pud.entries[pud_cid, idx[others]] = result
        k.stores[PMD].get(int(entry_value(result)), len(others))
        done[members] = True
    return bases[~done]


class _Tally:
    """The counters a transition changes, so that one computed once can be charged n times."""

    def __init__(self, k: Kernel, task: Task) -> None:
        self.k, self.task = k, task
        self.start = self._read()

    def _read(self) -> tuple:
        mm = self.task.mm
        return (self.task.minflt, mm.nr_ptes, mm.nr_pmds, self.k.frames.nr_pagetables, self.k.events.snapshot())

    def charge_again(self, times: int) -> None:
        d = [b - a for a, b in zip(self.start, self._read(), strict=True)]
        mm = self.task.mm
        self.task.minflt += d[0] * times
        mm.nr_ptes += d[1] * times
        mm.nr_pmds += d[2] * times
        self.k.frames.alloc_pgtables(d[3] * times)
        self.k.events.values += d[4] * times


# --- the PMD level: every PTE table the touch reaches ---------------------------------------------

@dataclass
class _Spans:
    """The PTE tables (2 MiB spans) a touch reaches, one row each."""

    region: np.ndarray  # which window (index into the window list)
    slot: np.ndarray  # entry index in the window's PMD table
    addr: np.ndarray  # the span's first address
    lo: np.ndarray  # entries [lo, hi) accessed (a sequential touch; [0, 0) for explicit accesses)
    hi: np.ndarray


def _fault_pte_windows(k: Kernel, task: Task, vma: VMA, pud_table: Table, bases: np.ndarray, acc: Accesses,
                       write: bool) -> None:
    """The faults of a sequential touch in the windows at ``bases`` of one PUD table."""
    windows = _Windows(k, task, vma, pud_table, bases)
    rest = np.arange(len(bases))
    if not write:
        rest = rest[~_attach_whole_windows(k, task, vma, windows, bases, acc)]
    if not len(rest):
        windows.finish()
        return
    spans = _sequential_spans(k, bases[rest], acc)
    spans.region = rest[spans.region]
    _fault_ptes(k, task, vma, windows, spans, _Sequential(acc, bases, k.geom.pmd.span), write, uniform=not write)


def _attach_whole_windows(k: Kernel, task: Task, vma: VMA, windows: _Windows, bases: np.ndarray,
                          acc: Accesses) -> np.ndarray:
    """A read of whole 1 GiB windows whose every PTE table a partner holds with every entry
    present, done per window rather than per table: with no PMD table yet, where partners offer
    each PTE table, each is attached (``pt_share_pte``) and each first access faults and finds its
    page there; with a PMD table just attached (``huge_pmd_share``), only the window's first access
    faults, and finds its page.  That is what the PTE-level step reaches, without building the
    windows' spans.  Returns which windows are done."""
    done = np.zeros(len(bases), dtype=bool)
    if acc.stride != PAGE_SIZE or huge_memory.thp_vma_allowable(k, vma):
        return done
    span = k.geom.pmd.span
    lo, hi = max(acc.start, vma.vm_start), min(acc.end, vma.vm_end)
    inside = (bases >= lo) & (bases + span <= hi)
    full = k.stores[PTE].full
    rows = np.flatnonzero(inside & windows.attached)
    if len(rows):
        entries = k.stores[PMD].entries[windows.cid[rows]]
        tags = entry_tag(entries)
        cid = entry_tables(k, entries)[1]
        whole = ((tags == E_TABLE) | (tags == E_SHARED)).all(axis=1)
        whole[whole] = (full[cid[whole]] != 0).all(axis=1)
        rows = rows[whole]
        windows.attached[rows] = False  # their first access is counted here
        k.events.add("fault_spurious", len(rows))
        _count_faults(k, task, len(rows))
        done[rows] = True
    if k.policy.pte_share_key(vma) is None:
        return done
    rows = np.flatnonzero(inside & windows.fresh & (windows.box == 0))
    if not len(rows):
        return done
    addrs = bases[rows][:, None] + np.arange(PTRS_PER_TABLE, dtype=np.int64) * k.geom.pte.span
    sids = ptshare.offered(k, vma, PTE, addrs.ravel()).reshape(len(rows), PTRS_PER_TABLE)
    whole = (sids != 0).all(axis=1)
    whole[whole] = (full[k.shared.content[sids[whole]]] != 0).all(axis=1)
    rows, sids = rows[whole], sids[whole]
    if not len(rows):
        return done
    ptshare.attach(k, task.mm, PTE, sids.ravel())
    windows.buffer[windows.slot_of[rows]] = mk_shared(sids)
    k.events.add("fault_spurious", sids.size)
    _count_faults(k, task, sids.size)
    done[rows] = True
    return done


def _fault_pte_explicit(k: Kernel, task: Task, vma: VMA, pud_table: Table, acc: Accesses, write: bool) -> None:
    """Random and zipf touches: index the accesses once, by the PTE table they fall in."""
    addrs = acc.addrs
    pmd_shift = k.geom.pmd.span.bit_length() - 1
    span_shift = k.geom.pte.span.bit_length() - 1
    keys = addrs >> span_shift
    low = int(keys.min())
    counts = np.bincount(keys - low)
    present = np.flatnonzero(counts)
    span_addr = (present + low) << span_shift
    window_keys = span_addr >> pmd_shift
    bases, region = np.unique(window_keys, return_inverse=True)
    windows = _Windows(k, task, vma, pud_table, bases << pmd_shift)
    spans = _Spans(region=region, slot=(span_addr >> span_shift) & (PTRS_PER_TABLE - 1), addr=span_addr,
                   lo=np.zeros(len(span_addr), dtype=np.int64), hi=np.zeros(len(span_addr), dtype=np.int64))
    row_of_key = np.zeros(len(counts), dtype=np.int64)
    row_of_key[present] = np.arange(len(present))
    _fault_ptes(k, task, vma, windows, spans, _Explicit(addrs, row_of_key[keys - low], len(present)), write,
                uniform=False)


def _fault_ptes(k: Kernel, task: Task, vma: VMA, windows: _Windows, spans: _Spans, accs: _Touches, write: bool,
                uniform: bool) -> None:
    old = windows.entries(spans)
    _count_faults(k, task, windows.spurious(spans, accs))
    huge, faults = huge_memory.do_huge_pmd_faults(k, task, vma, old, spans.addr, lambda rows: accs.of(spans, rows),
                                                  write, lambda rows, values: windows.set(spans, rows, values))
    _count_faults(k, task, faults)
    groups = _uniform_spans(k, vma, spans, old, accs.acc) if uniform and not huge.any() else []
    grouped = huge.copy()
    for members in groups:
        grouped[members] = True
    _count_faults(k, task, _fault_spans(k, task, vma, windows, spans, accs, old, np.flatnonzero(~grouped), write))
    for members in groups:
        tally = _Tally(k, task)
        _count_faults(k, task, _fault_spans(k, task, vma, windows, spans, accs, old, members[:1], write))
        tally.charge_again(len(members) - 1)
        windows.replicate(spans, members, old)
    windows.finish()


class _Windows:
    """The PMD tables of the windows a touch reaches.

    A window with no PMD table gets one (or attaches a partner's); its entries are built in a
    buffer and stored at :meth:`finish`, where a table with equal contents, if any, is shared
    instead of stored again.  An existing table is made private to the mm only when one of its
    entries changes.  Entries given to :meth:`set` carry their reference on a PTE table's contents
    but not on a shared table, whose storage reference is taken where the entry is stored.
    """

    def __init__(self, k: Kernel, task: Task, vma: VMA, pud_table: Table, bases: np.ndarray) -> None:
        pud_cid = pud_table.cid
        self.k, self.task, self.vma, self.pud_cid = k, task, vma, pud_cid
        pud = k.stores[PUD]
        self.bases = bases
        self.idx = (self.bases >> k.geom.pud.shift) & (PTRS_PER_TABLE - 1)
        entries = pud.entries[pud_cid, self.idx]
        none = entry_tag(entries) == E_NONE
        self.attached = np.zeros(len(bases), dtype=bool)
        self.fresh = np.zeros(len(bases), dtype=bool)
        if none.any():
            rows = np.flatnonzero(none)
            sids = np.zeros(len(rows), dtype=np.int64)
            if not pud_table.box:  # inside a shared PUD table, PMD tables are not shared apart
                sids, self.attached[rows] = ptshare.share_alloc(k, task.mm, vma, PMD, self.bases[rows])
            shared = sids != 0
            if shared.any():
                pud.entries[pud_cid, self.idx[rows[shared]]] = ptshare.mk_shared_entry(k, sids[shared])
            self.fresh[rows[~shared]] = True
            account_alloc(k, task.mm, PMD, int((~shared).sum()), pud_table.box)
            entries = pud.entries[pud_cid, self.idx]
        self.sid, self.cid = entry_tables(k, entries)
        self.box = np.where(self.sid != 0, self.sid, pud_table.box)  # where tables allocated in it count
        self.private = self.fresh.copy()
        self.buffer = np.zeros((int(self.fresh.sum()), PTRS_PER_TABLE), dtype=np.int64)
        self.slot_of = np.cumsum(self.fresh) - 1  # window -> its row in the buffer

    def entries(self, spans: _Spans, rows: np.ndarray | None = None) -> np.ndarray:
        region = spans.region if rows is None else spans.region[rows]
        slot = spans.slot if rows is None else spans.slot[rows]
        fresh = self.fresh[region]
        if fresh.all():
            return self.buffer[self.slot_of[region], slot]
        out = self.k.stores[PMD].entries[self.cid[region], slot]
        if fresh.any():
            out[fresh] = self.buffer[self.slot_of[region[fresh]], slot[fresh]]
        return out

    def spurious(self, spans: _Spans, accs: _Touches) -> int:
        """A window whose PMD table was just attached: its first access faulted (the table was
        missing) and, if the partners had mapped that page, found it there."""
        regions = np.flatnonzero(self.attached)
        if not len(regions):
            return 0
        row, first = accs.first_in_windows(spans, regions)
        entry = self.k.stores[PMD].entries[self.cid[regions], spans.slot[row]]
        table = entry_tag(entry) == E_TABLE
        ent = (first[table] >> PAGE_SHIFT) & (PTRS_PER_TABLE - 1)
        present = self.k.stores[PTE].present[entry_value(entry[table]), ent // 8]
        n = int(((present >> (ent % 8)) & 1).sum())
        self.k.events.add("fault_spurious", n)
        return n

    def own(self, regions: np.ndarray) -> None:
        """Make the PMD tables of ``regions`` private to the mm before their entries change."""
        k = self.k
        todo = np.unique(regions[~self.private[regions]])
        for r in todo.tolist():
            if self.sid[r]:
                self.cid[r] = k.shared.cow_content(int(self.sid[r]))
            else:
                self.cid[r] = k.stores[PMD].cow(int(self.cid[r]))
                k.stores[PUD].entries[self.pud_cid, self.idx[r]] = mk_table(self.cid[r])
            self.private[r] = True

    def unshare(self, spans: _Spans, rows: np.ndarray) -> np.ndarray:
        """Give the mm its own copies of the shared PTE tables of ``rows`` (:func:`shared_entry`),
        as a copy-on-write table is copied before it changes; returns their contents."""
        k = self.k
        self.own(spans.region[rows])
        cids = np.zeros(len(rows), dtype=np.int64)
        for n, (region, slot, addr) in enumerate(zip(spans.region[rows].tolist(), spans.slot[rows].tolist(),
                                                     spans.addr[rows].tolist(), strict=True)):
            table = shared_entry(k, self.task.mm, PTE, int(self.cid[region]), slot, addr, addr + k.geom.pte.span,
                                 Shared.UNSHARE, int(self.box[region]))
            cids[n] = table.cid
        return cids

    def set(self, spans: _Spans, rows: np.ndarray, values: np.ndarray) -> None:
        region, slot = spans.region[rows], spans.slot[rows]
        fresh = self.fresh[region]
        if fresh.any():
            self.buffer[self.slot_of[region[fresh]], slot[fresh]] = values[fresh]
        if (~fresh).any():
            region, slot, values = region[~fresh], slot[~fresh], values[~fresh]
            shared = entry_tag(values) == E_SHARED
            if shared.any():
                self.k.shared.get(entry_value(values[shared]))
            self.own(region)
            self.k.stores[PMD].entries[self.cid[region], slot] = values

    def replicate(self, spans: _Spans, members: np.ndarray, old: np.ndarray) -> None:
        """Give the other members of a group the contents the first one ended with."""
        k = self.k
        result = int(self.entries(spans, members[:1])[0])
        others = members[1:]
        gone = old[others]
        gone = gone[entry_tag(gone) == E_TABLE]
        if len(gone):
            k.stores[PTE].put(entry_value(gone))
        k.stores[PTE].get(int(entry_value(result)), len(others))
        self.set(spans, others, np.full(len(others), result, dtype=np.int64))

    def finish(self) -> None:
        """Store the new PMD tables, sharing storage with an equal table where there is one, and let
        tables that changed share with an equal one too."""
        k = self.k
        pmd = k.stores[PMD]
        pud = k.stores[PUD]
        fresh = np.flatnonzero(self.fresh)
        if len(fresh):
            self.cid[fresh] = pmd.adopt_many(self.buffer[self.slot_of[fresh]])
            pud.entries[self.pud_cid, self.idx[fresh]] = mk_table(self.cid[fresh])
        for r in np.flatnonzero(self.private & ~self.fresh & (self.sid == 0)).tolist():
            cid = pmd.intern(int(self.cid[r]))
            if cid != self.cid[r]:
                self.cid[r] = cid
                pud.entries[self.pud_cid, self.idx[r]] = mk_table(cid)


def _sequential_spans(k: Kernel, bases: np.ndarray, acc: Accesses) -> _Spans:
    """The PTE tables a sequential touch reaches in the windows at ``bases``, with the entries it
    accesses in each."""
    shift = k.geom.pte.span.bit_length() - 1
    window = k.geom.pmd.span
    lo = np.maximum(bases, acc.start)
    hi = np.minimum(bases + window, acc.end)
    first = (lo - bases) >> shift
    counts = ((hi - 1 - bases) >> shift) - first + 1
    region = np.repeat(np.arange(len(bases)), counts)
    slot = np.repeat(first, counts) + np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    addr = bases[region] + (slot << shift)
    spans = _Spans(region=region, slot=slot, addr=addr,
                   lo=np.clip((acc.start - addr) >> PAGE_SHIFT, 0, PTRS_PER_TABLE),
                   hi=np.clip(-(-(acc.end - addr) >> PAGE_SHIFT), 0, PTRS_PER_TABLE))
    if acc.stride != PAGE_SIZE:
        _first, n = _strided(acc, spans.addr, spans.lo, spans.hi)
        keep = n > 0
        spans = _Spans(*(getattr(spans, f)[keep] for f in ("region", "slot", "addr", "lo", "hi")))
    return spans


def _uniform_spans(k: Kernel, vma: VMA, spans: _Spans, old: np.ndarray, acc: Accesses) -> list[np.ndarray]:
    """Runs of whole PTE tables whose transition is the same (see the module docstring)."""
    if len(old) < 2 or k.policy.pte_share_key(vma) is not None or acc.stride != PAGE_SIZE:
        return []
    whole = (spans.lo == 0) & (spans.hi == PTRS_PER_TABLE)
    whole &= (spans.addr >= vma.vm_start) & (spans.addr + k.geom.pte.span <= vma.vm_end)
    whole &= entry_tag(old) != E_SHARED
    if not whole.any():
        return []
    lo, hi = int(spans.addr[whole].min()), int(spans.addr[whole].max()) + k.geom.pte.span
    if not _cached_whole(vma, lo, hi):
        return []
    rows = np.flatnonzero(whole)
    _keys, inverse = np.unique(old[rows], return_inverse=True)
    counts = np.bincount(inverse)
    if not (counts > 1).any():  # every table different (each maps other pages): nothing to share
        return []
    order = np.argsort(inverse, kind="stable")
    groups = np.split(rows[order], np.cumsum(counts)[:-1])
    return [members for members in groups if len(members) > 1]


def _fault_spans(k: Kernel, task: Task, vma: VMA, win: _Windows, spans: _Spans, accs: _Touches,
                 old: np.ndarray, rows: np.ndarray, write: bool) -> int:
    """Resolve the PTE tables of ``rows`` (allocate or attach), then the faults in those that miss."""
    if len(rows) == 0:
        return 0
    k.stores[PTE]
    tag = entry_tag(old[rows])
    faults = 0
    # Tables to allocate or attach (pte_alloc / pt_share_pte).
    none_pos = np.flatnonzero(tag == E_NONE)
    none = rows[none_pos]
    attached = np.zeros(0, dtype=np.int64)
    if len(none):
        in_box = win.box[spans.region[none]] != 0
        sids = np.zeros(len(none), dtype=np.int64)
        got = np.zeros(len(none), dtype=bool)
        if (~in_box).any():
            sids[~in_box], got[~in_box] = ptshare.share_alloc(k, task.mm, vma, PTE, spans.addr[none[~in_box]])
        boxed = sids != 0
        if boxed.any():
            entries = mk_shared(sids[boxed])
            win.set(spans, none[boxed], entries)
            old[none[boxed]] = entries
            attached = none_pos[boxed & got]  # positions in rows
    sid, cid = entry_tables(k, old[rows])
    # Which tables need their pages looked at: some access finds an entry that does not allow it.
    work = _misses(k, spans, rows, cid, write)
    if not accs.progression and not write:
        work &= _explicit_misses(k, spans, accs, rows, cid)
    if len(attached):
        faults += _spurious(k, win, spans, accs, rows[attached], cid[attached])
    cow = work & (k.shared.mode[sid] >= COW) & (k.shared.users[sid] > 1)  # COW or COW_COUNTED
    if cow.any():  # a change to a copy-on-write table others use: copy it first
        sid[cow], cid[cow] = 0, win.unshare(spans, rows[cow])
    work_pos = np.flatnonzero(work)
    for start in range(0, len(work_pos), CHUNK):
        pos = work_pos[start:start + CHUNK]
        faults += _fault_chunk(k, task, vma, win, spans, accs, old, rows[pos], cid[pos], sid[pos], write)
    return faults


def _misses(k: Kernel, spans: _Spans, rows: np.ndarray, cid: np.ndarray, write: bool) -> np.ndarray:
    """Per table: whether some access finds an entry that is absent.  A write always needs the
    page-level step, which stores what it writes."""
    if write:
        return np.ones(len(rows), dtype=bool)
    pte = k.stores[PTE]
    lo, hi = spans.lo[rows], spans.hi[rows]
    known = hi > lo  # sequential touches: the entries accessed are [lo, hi)
    work = np.ones(len(rows), dtype=bool)
    has = cid != 0
    sel = known & has
    if sel.any():
        cids = cid[sel]
        whole = (lo[sel] == 0) & (hi[sel] == PTRS_PER_TABLE)
        full = pte.full[cids] != 0  # whole tables: their all-present mark
        part = np.flatnonzero(~whole)
        if len(part):
            need = bitmap_pack(range_bits(lo[sel][part], hi[sel][part]))
            full[part] = ((pte.present[cids[part]] & need) == need).all(axis=1)
        work[np.flatnonzero(sel)] = ~full
    return work


def _explicit_misses(k: Kernel, spans: _Spans, accs: _Touches, rows: np.ndarray, cid: np.ndarray) -> np.ndarray:
    """Per table of a random or zipf read: whether some access finds its entry absent."""
    has = np.flatnonzero(cid != 0)
    miss = np.ones(len(rows), dtype=bool)
    if len(has):
        inv, ent, _addrs = accs.of(spans, rows[has])
        present = k.stores[PTE].present
        absent = ((present[cid[has][inv], ent >> 3] >> (ent & 7)) & 1) == 0
        miss[has] = np.bincount(inv, weights=absent, minlength=len(has)) > 0
    return miss


def _spurious(k: Kernel, win: _Windows, spans: _Spans, accs: _Touches, rows: np.ndarray,
              cid: np.ndarray) -> int:
    """A table just attached that already maps the first page accessed: that access faulted (the
    table was missing) and found the page there."""
    pte = k.stores[PTE]
    full = pte.full[cid] != 0
    n = int(full.sum())
    if n < len(rows):
        part = ~full
        first = accs.first_entry(spans, rows[part])
        n += int((((pte.present[cid[part], first // 8] >> (first % 8)) & 1) == 1).sum())
    k.events.add("fault_spurious", n)
    return n


def _fault_chunk(k: Kernel, task: Task, vma: VMA, win: _Windows, spans: _Spans, accs: _Touches,
                 old: np.ndarray, rows: np.ndarray, cid: np.ndarray, sid: np.ndarray, write: bool) -> int:
    """Page-level faults in the PTE tables ``rows``, then their new contents stored."""
    pte = k.stores[PTE]
    if not write:
        packed = _packed_read_ok(k, vma, spans, rows)
        if packed.any():
            faults = _fault_chunk_packed(k, task, vma, win, spans, accs, rows[packed], cid[packed], sid[packed])
            if packed.all():
                return faults
            rest = ~packed
            return faults + _fault_chunk(k, task, vma, win, spans, accs, old, rows[rest], cid[rest], sid[rest],
                                         write)
    n = len(rows)
    P = np.zeros((n, PTRS_PER_TABLE), dtype=bool)
    W = np.zeros_like(P)
    PFN = np.zeros((n, PTRS_PER_TABLE), dtype=np.int64)
    has = cid != 0
    if has.any():
        P[has], W[has], PFN[has] = pte.load(cid[has])
    inv, ent, addrs = accs.of(spans, rows)
    progression = accs.progression
    addr = spans.addr[rows]
    vs = np.clip((vma.vm_start - addr) >> PAGE_SHIFT, 0, PTRS_PER_TABLE)
    ve = np.clip((vma.vm_end - addr) >> PAGE_SHIFT, 0, PTRS_PER_TABLE)
    P0, W0, F0 = P.copy(), W.copy(), PFN.copy()
    faults = PteFaults(k, vma, addr, vs, ve, P, W, PFN, inv, ent, addrs, progression, write).run()
    changed = (P != P0).any(axis=1) | (W != W0).any(axis=1) | (PFN != F0).any(axis=1)
    _store_tables(k, task, win, spans, rows, cid, sid, changed, lambda ids, m: pte.store(ids, P[m], W[m], PFN[m]),
                  lambda m: pte.new(P[m], W[m], PFN[m]))
    return faults


def _store_tables(k: Kernel, task: Task, win: _Windows, spans: _Spans, rows: np.ndarray, cid: np.ndarray,
                  sid: np.ndarray, changed: np.ndarray, store, create) -> None:
    """Store the new contents of the tables ``rows``: tables allocated now that their contents are
    known (pte_alloc + set_pte), the mm's own tables (copied first if their storage is shared) and
    shared tables (in place, for every user).  ``store(ids, mask)`` and ``create(mask)`` write the
    contents of the rows selected by ``mask``."""
    fresh = cid == 0
    if fresh.any():
        win.set(spans, rows[fresh], mk_table(create(fresh)))
        boxes = win.box[spans.region[rows[fresh]]]
        for box in np.unique(boxes).tolist():
            account_alloc(k, task.mm, PTE, int((boxes == box).sum()), int(box))
    own = ~fresh & (sid == 0) & changed
    if own.any():
        new = k.stores[PTE].cow(cid[own])
        store(new, own)
        win.set(spans, rows[own], mk_table(new))
    boxed = ~fresh & (sid != 0) & changed
    if boxed.any():
        store(k.shared.cow_contents(sid[boxed]), boxed)


def _packed_read_ok(k: Kernel, vma: VMA, spans: _Spans, rows: np.ndarray) -> np.ndarray:
    """Per table: a read of a shared file mapping whose pages are all cached, in a table the VMA
    covers whole -- every entry maps its file page implicitly and fault-around never reads from
    disk, so the faults can be taken on the packed masks alone."""
    no = np.zeros(len(rows), dtype=bool)
    if vma.obj is None or not vma.is_shared or vma.obj.nr_cached != vma.obj.nr_pages:
        return no
    addr = spans.addr[rows]
    span = k.geom.pte.span
    inside = (addr >= vma.vm_start) & (addr + span <= vma.vm_end)
    last = ((addr + span - PAGE_SIZE - vma.vm_start) >> PAGE_SHIFT) + vma.vm_pgoff
    return inside & (last < vma.obj.nr_pages)


def _fault_chunk_packed(k: Kernel, task: Task, vma: VMA, win: _Windows, spans: _Spans, accs: _Touches,
                        rows: np.ndarray, cid: np.ndarray, sid: np.ndarray) -> int:
    """do_read_fault() with fault-around on packed masks: each fault-around window with a missed
    page faults once and maps all of it (no page of it needs reading from disk)."""
    pte = k.stores[PTE]
    n = len(rows)
    has = cid != 0
    present = np.zeros((n, PTRS_PER_TABLE // 8), dtype=np.uint8)
    write = np.zeros_like(present)
    present[has] = pte.present[cid[has]]
    write[has] = pte.write[cid[has]]
    inv, ent, _addrs = accs.of(spans, rows)
    miss = ((present[inv, ent >> 3] >> (ent & 7)) & 1) == 0
    nr = k.policy.fault_around_pages
    hit = np.zeros((n, PTRS_PER_TABLE // nr), dtype=bool)
    hit[inv[miss], ent[miss] // nr] = True
    faults = int(hit.sum())
    if faults == 0:
        return 0
    if nr == 16:
        add = np.where(hit, np.uint16(0xFFFF), np.uint16(0)).view(np.uint8)
    else:
        add = bitmap_pack(np.repeat(hit, nr, axis=1))
    newly = add & ~present
    present |= add
    if vma.pte_writable():
        write |= newly
    k.events.add("fault_file", faults)
    k.events.add("fault_around_ptes", int(np.bitwise_count(newly).sum()) - faults)
    _store_tables(k, task, win, spans, rows, cid, sid, newly.any(axis=1),
                  lambda ids, m: pte.store_packed(ids, present[m], write[m]),
                  lambda m: pte.new_packed(present[m], write[m]))
    return faults


def _strided(acc: Accesses, addr: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First entry accessed and number of accesses in each span of a sequential touch."""
    step = acc.stride >> PAGE_SHIFT
    phase = ((acc.start >> PAGE_SHIFT) - (addr >> PAGE_SHIFT) - lo) % step
    first = lo + phase
    return first, np.maximum(0, (hi - first + step - 1) // step)


class _Touches:
    """The accesses of a touch, by PTE table: what the page-level step of any set of tables gets."""

    progression: bool

    def of(self, spans: _Spans, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The accesses into the tables ``rows``, in order: (row in ``rows``, entry, address)."""
        raise NotImplementedError

    def first_entry(self, spans: _Spans, rows: np.ndarray) -> np.ndarray:
        """The entry each table ``rows`` is first accessed at."""
        raise NotImplementedError

    def first_in_windows(self, spans: _Spans, regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each 1 GiB window of ``regions`` (each with an access): the row of the table its
        first access falls in, and that access's address."""
        raise NotImplementedError


class _Sequential(_Touches):
    """A sequential touch: the accesses of each table are a progression, computed, never stored."""

    progression = True

    def __init__(self, acc: Accesses, bases: np.ndarray, window: int) -> None:
        self.acc = acc
        self.bases = bases
        self.window = window

    def of(self, spans: _Spans, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        step = self.acc.stride >> PAGE_SHIFT
        addr = spans.addr[rows]
        first, counts = _strided(self.acc, addr, spans.lo[rows], spans.hi[rows])
        inv = np.repeat(np.arange(len(rows)), counts)
        offset = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        ent = np.repeat(first, counts) + offset * step
        return inv, ent, addr[inv] + (ent << PAGE_SHIFT)

    def first_entry(self, spans: _Spans, rows: np.ndarray) -> np.ndarray:
        if self.acc.stride == PAGE_SIZE:
            return spans.lo[rows]
        return _strided(self.acc, spans.addr[rows], spans.lo[rows], spans.hi[rows])[0]

    def first_in_windows(self, spans: _Spans, regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        acc = self.acc
        base = self.bases[regions]
        late = base > acc.start
        first = np.where(late, acc.start + -(-(base - acc.start) // acc.stride) * acc.stride, acc.start)
        row = np.searchsorted(spans.addr, first & ~np.int64(PTRS_PER_TABLE * PAGE_SIZE - 1))
        return row, first


class _Explicit(_Touches):
    """Random or zipf accesses, sorted once (stably) by the table they fall in."""

    progression = False

    def __init__(self, addrs: np.ndarray, row: np.ndarray, nrows: int) -> None:
        key = row.astype(np.int16) if nrows < 1 << 15 else row  # a stable sort of small ints is a radix sort
        order = np.argsort(key, kind="stable")
        self.sorted = addrs[order]  # accesses grouped by table, in order within each
        self.row = row[order]
        self.starts = np.zeros(nrows + 1, dtype=np.int64)
        np.cumsum(np.bincount(row, minlength=nrows), out=self.starts[1:])
        self.first_pos = order[self.starts[:-1]]  # where each table's first access is in the touch

    def of(self, spans: _Spans, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if rows[-1] - rows[0] + 1 == len(rows):  # consecutive tables: one slice
            part = slice(self.starts[rows[0]], self.starts[rows[-1] + 1])
            addrs = self.sorted[part]
            return self.row[part] - rows[0], (addrs >> PAGE_SHIFT) & (PTRS_PER_TABLE - 1), addrs
        begin, counts = self.starts[rows], self.starts[rows + 1] - self.starts[rows]
        inv = np.repeat(np.arange(len(rows)), counts)
        pos = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(begin, counts)
        addrs = self.sorted[pos]
        return inv, (addrs >> PAGE_SHIFT) & (PTRS_PER_TABLE - 1), addrs

    def first_entry(self, spans: _Spans, rows: np.ndarray) -> np.ndarray:
        return (self.sorted[self.starts[rows]] >> PAGE_SHIFT) & (PTRS_PER_TABLE - 1)

    def first_in_windows(self, spans: _Spans, regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.lexsort((self.first_pos, spans.region))  # by window, earliest first access first
        head = order[np.r_[True, spans.region[order][1:] != spans.region[order][:-1]]]
        row = head[np.searchsorted(spans.region[head], regions)]
        return row, self.sorted[self.starts[row]]


__all__ = ["handle_mm_fault_range"]
