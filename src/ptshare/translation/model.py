"""Address translation of the accesses a run makes: TLBs, paging-structure caches, caches.

Models what the MMU and the cache hierarchy do with each access of a ``touch``:

* Per CPU, an L1 dTLB and an L2 TLB whose entries are tagged by address space (PCID): entries are
  never shared between processes, even where their page tables are.  A CPU keeps entries for at
  most ``cpu.asids`` address spaces (Linux's ``TLB_NR_DYN_ASIDS`` = 6); switching to a seventh
  takes a slot round-robin (``choose_new_asid()``), and the newcomer starts with no entries.
  ``tlb_flush_mm`` empties one mm's entries on every CPU, ``tlb_flush_all`` everybody's.
* On an L2 TLB miss, a page walk.  Paging-structure caches (per upper level, also PCID-tagged)
  let it start below the root; it then reads one entry per remaining level -- four for a 4 KiB
  page with nothing cached, one fewer for a 2 MiB hugetlb page, whose leaf is the PMD entry.
* Every entry a walk reads is a 64-byte line of a page-table page, looked up in the same L1d,
  L2 and LLC as the data: page-table lines are cache lines like data.  A table is one physical
  page (:func:`ptshare.mm.translate.table_walk` names it), so a shared table's lines serve every
  sharer while private tables multiply them.
* A round-robin scheduler deals the accesses out in slices of ``slice`` accesses, one CPU after
  the other: consecutive steps of different processes run on different CPUs, as backends
  interleave on a server.  The L1d and L2 are per CPU, the LLC is shared.

Each structure is fully associative LRU, computed exactly over every access it sees with
:class:`LruStack`, except the LLC: its 512 Ki lines would make every step cost passes over them,
so it sees a spatial sample of the lines (those whose hash falls in 1/``llc_sample`` of the range,
as in SHARDS: C. A. Waldspurger et al., "Efficient MRC construction with SHARDS", FAST 2015), with
its capacity scaled to match, and the LLC hits and misses it counts scaled back up.

A long step is simulated on a sample of its touches.  Within one step (a scenario step, all its
repeats: a thousand backends' reads), the first ``exact`` accesses are simulated, and beyond them
a touch is simulated only while the simulated accesses stay within 1/``sample`` of the step's;
every other touch is given the figures per access of the touches of that step simulated so far
(a ratio estimate), and still takes its turn on the CPUs and its ASID.  The touches of a step do
the same kind of thing (that is what makes them one step), so the simulated ones stand for the
rest; what a skipped touch would have left in the caches is missing for the next simulated one,
whose state was left by an earlier touch of the same kind.  A step whose first touch alone is
longer than the budget simulates that touch's last ``exact`` accesses and scales them: they
leave the TLBs and caches much as the whole touch would (LRU state is made by the most recent
references), but they start colder than they would after the rest (an over-estimate of misses
when the touch reuses what it touched).  ``sample`` = 1 simulates everything.
``tests/test_translation.py`` measures both samples' error against the full simulation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np

from ..arch import PAGE_SHIFT
from ..mm.translate import mix, table_walk, translate
from .cpus import DEFAULT, Cpu
from .lru import LruStack

if TYPE_CHECKING:
    from ..mm.access import Accesses
    from ..mm.kernel import Kernel
    from ..mm.mm_struct import Task

PWC_LEVELS = {3: "pml4e", 2: "pdpte", 1: "pde"}  # the upper-level entry each cache holds, by level
_DATA_ROOT = 0x44415441  # data lines are hashed apart from page-table lines
_HOST_ROOT = 0x484F5354  # ... and the host's page-table lines (nested paging) apart from both
PAGE_MASK = (1 << PAGE_SHIFT) - 1
SLICE = 4096
LLC_SAMPLE = 16
CHUNK_SLICES = 16
EXACT = 1 << 20  # accesses of a step always simulated



@dataclass
class Figures:
    """Translation figures of some accesses (the JSON contract's ``translation`` object)."""

    accesses: float = 0.0
    tlb_misses: float = 0.0  # L1 dTLB misses
    walks: float = 0.0  # L2 TLB misses: page walks
    walk_refs: float = 0.0  # page-table entries the walks read from the cache hierarchy
    walk_refs_llc_miss: float = 0.0  # ... of which from DRAM
    walk_refs_llc: float = 0.0  # ... of which from the LLC (an extra field)
    data_llc_miss: float = 0.0  # data references from DRAM
    est_ns: float = 0.0  # modelled time of the accesses, data and translation
    served: np.ndarray = field(default_factory=lambda: np.zeros(4))  # references by where served: L1d..DRAM

    def add(self, other: Figures) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def scaled(self, factor: float) -> Figures:
        return Figures(**{f.name: getattr(self, f.name) * factor for f in fields(self)})

    def to_json(self) -> dict[str, int]:
        out = {f.name: round(getattr(self, f.name)) for f in fields(self) if f.name != "served"}
        out.update(zip(("refs_l1", "refs_l2", "refs_llc", "refs_dram"), (round(x) for x in self.served), strict=True))
        return out


class _CpuState:
    def __init__(self, cpu: Cpu) -> None:
        self.tlb = LruStack(cpu.tlb_l2)
        self.pwc = {lvl: LruStack(cpu.pwc[name]) for lvl, name in PWC_LEVELS.items() if name in cpu.pwc}
        self.cache = LruStack(cpu.lines(cpu.l2))
        self.slots: list[int] = []  # mm ids holding this CPU's ASIDs
        self.next_asid = 0
        self.current = 0


class Translation:
    """The translation model of one :class:`ptshare.System`; fed by its touches and TLB flushes."""

    def __init__(self, k: Kernel, cpu: Cpu = DEFAULT, *, slice: int = SLICE, llc_sample: int = LLC_SAMPLE,
                 sample: int = 1, exact: int = EXACT) -> None:
        if slice < 1 or llc_sample < 1 or llc_sample & (llc_sample - 1):
            raise ValueError("slice must be >= 1 and llc_sample a power of two")
        if sample < 1 or exact < 1:
            raise ValueError("sample and exact must be >= 1")
        self.k, self.cpu = k, cpu
        self.slice, self.llc_rate = slice, llc_sample
        self.sample, self.exact = sample, exact
        self.seen = self.simulated = 0  # this step's accesses, and how many of them were simulated
        self.pool = Figures()  # what the simulated ones counted
        self.cpus = [_CpuState(cpu) for _ in range(k.cpus)]
        self.llc = LruStack(max(1, cpu.lines(cpu.llc) // llc_sample))
        self.next_cpu = 0
        self.epoch: dict[tuple[int, int], int] = {}  # (cpu, mm id) -> ASID generation on that CPU
        self.mm_gen: dict[int, int] = {}  # mm id -> tlb_flush_mm count
        self.all_gen = 0
        self.step = Figures()
        self.per_process: dict[str, Figures] = {}

    # --- flushes and context switches ----------------------------------------------------------

    def flush(self, mm_ids: set[int], everyone: bool) -> None:
        """The flushes an operation owes (``Kernel.tlb_finish``): their entries are gone."""
        for mm_id in mm_ids:
            self.mm_gen[mm_id] = self.mm_gen.get(mm_id, 0) + 1
        if everyone:
            self.all_gen += 1

    def _switch_to(self, c: int, mm_id: int) -> None:
        """switch_mm_irqs_off(): reuse the mm's ASID on this CPU, or take the next one round-robin."""
        st = self.cpus[c]
        st.current = mm_id
        if mm_id in st.slots:
            return
        if len(st.slots) < self.cpu.asids:
            st.slots.append(mm_id)
        else:
            st.slots[st.next_asid] = mm_id
            st.next_asid = (st.next_asid + 1) % self.cpu.asids
        self.epoch[c, mm_id] = self.epoch.get((c, mm_id), 0) + 1

    def _asid_key(self, c: int, mm_id: int) -> np.uint64:
        tag = (mm_id, self.mm_gen.get(mm_id, 0), self.all_gen, self.epoch.get((c, mm_id), 0))
        key = np.uint64(0)
        for part in tag:
            key = mix(key, part)
        return key

    # --- accesses ------------------------------------------------------------------------------

    def access(self, task: Task, acc: Accesses, fresh: np.ndarray | None = None) -> Figures:
        """Translate the accesses ``acc`` of ``task`` (already mapped by the fault path).

        ``fresh`` marks the accesses whose page was not mapped before the touch: the fault path
        has just written their leaf entry, so the walk finds that line in the CPU's L1d.
        """
        n = len(acc)
        if n == 0:
            return Figures()
        m = self.plan(n)
        self.seen += n
        if m == n:
            out = self._touch(task, acc.materialize(), fresh)
        elif m:  # the step's first touch, longer than the budget: its end stands for it
            self._schedule(task.mm.id, n - m)
            out = self._touch(task, acc.materialize()[n - m:], fresh).scaled(n / m)
        else:  # the figures per access of this step's simulated touches
            self._schedule(task.mm.id, n)
            out = self.pool.scaled(n / self.simulated)
        self.step.add(out)
        self.per_process.setdefault(task.name, Figures()).add(out)
        return out

    def plan(self, n: int) -> int:
        """How many of the next touch's ``n`` accesses will be simulated, counted from its end (the
        rest are estimated): all, while the step stays within its budget; of the step's first
        touch that is longer than the budget, its last ``budget``; of any later one, none."""
        budget = max(self.exact, (self.seen + n) // self.sample)
        if self.simulated + n <= budget:
            return n
        return budget if self.simulated == 0 else 0

    def _touch(self, task: Task, addrs: np.ndarray, fresh: np.ndarray | None) -> Figures:
        """Simulate the accesses ``addrs``, in bounded batches (the stacks carry state across them)."""
        out = Figures()
        step = CHUNK_SLICES * self.slice
        for lo in range(0, len(addrs), step):
            part = None if fresh is None else fresh[lo:lo + step]
            out.add(self._simulate(task.mm.id, task.mm, addrs[lo:lo + step], part))
        self.simulated += len(addrs)
        self.pool.add(out)
        return out

    def _schedule(self, mm_id: int, n: int) -> int:
        """The round-robin scheduler: slice q of ``n`` accesses goes to CPU first + q, each
        switched to ``mm_id``.  Returns ``first``."""
        ncpus, first = len(self.cpus), self.next_cpu
        nslices = (n - 1) // self.slice + 1
        for q in range(min(nslices, ncpus)):
            self._switch_to((first + q) % ncpus, mm_id)
        self.next_cpu = (first + nslices) % ncpus
        return first

    def _simulate(self, mm_id: int, mm, addrs: np.ndarray, fresh: np.ndarray | None) -> Figures:
        k, cpu, lat = self.k, self.cpu, self.cpu.latency
        ident, leaf = table_walk(k, mm, addrs)
        mapped = leaf >= 0
        addrs, ident, leaf = addrs[mapped], ident[:, mapped], leaf[mapped]
        fresh = np.zeros(len(addrs), dtype=bool) if fresh is None else fresh[mapped]
        n = len(addrs)
        fig = Figures(accesses=n)
        if n == 0:
            return fig
        cpu_of = (self._schedule(mm_id, n) + np.arange(n) // self.slice) % len(self.cpus)
        shifts = np.array([lv.shift for lv in k.geom.levels], dtype=np.int64)
        tlb_shift = shifts[leaf] if not cpu.host_page else np.minimum(shifts[leaf], cpu.host_page.bit_length() - 1)
        pfn = translate(k, mm, addrs)
        # a guest-physical address: a hugetlb folio is one frame number standing for 2 MiB
        gpa = (pfn << shifts[leaf]) + (addrs & ((1 << shifts[leaf]) - 1) & ~PAGE_MASK)
        data_key = mix(np.full(n, _DATA_ROOT, dtype=np.uint64), gpa >> PAGE_SHIFT)
        walk_level = np.full(n, -1, dtype=np.int64)  # the highest level a walk reads (-1: no walk)
        for c, st in enumerate(self.cpus):
            on = np.flatnonzero(cpu_of == c)
            if not len(on):
                continue
            asid = self._asid_key(c, mm_id)
            dist = st.tlb.access(mix(mix(asid, leaf[on]), addrs[on] >> tlb_shift[on]))
            fig.tlb_misses += int((dist >= cpu.tlb_l1).sum())
            walk = on[dist >= cpu.tlb_l2]
            fig.walks += len(walk)
            top = len(k.geom.levels) - 1
            start = np.full(len(walk), top, dtype=np.int64)
            for lvl in sorted(st.pwc):  # lowest level first: the deepest cached entry wins
                above = leaf[walk] < lvl
                w = walk[above]
                d = st.pwc[lvl].access(mix(asid, addrs[w] >> shifts[lvl]))
                cached = np.zeros(len(walk), dtype=bool)
                cached[np.flatnonzero(above)[d < st.pwc[lvl].capacity]] = True
                start = np.where(cached & (start == top), lvl - 1, start)
            walk_level[walk] = start
        keys, is_data, owner, guest_level = self._references(ident, leaf, walk_level, addrs, shifts, gpa, data_key)
        level = self._caches(keys, cpu_of[owner])
        level[(guest_level == leaf[owner]) & fresh[owner]] = 0  # the leaf entry the fault just wrote
        for mask, miss_field in ((is_data, "data_llc_miss"), (~is_data, "walk_refs_llc_miss")):
            served = np.bincount(level[mask], minlength=5)[:4] * np.array([1, 1, self.llc_rate, self.llc_rate])
            setattr(fig, miss_field, int(served[3]))
            if miss_field == "walk_refs_llc_miss":
                fig.walk_refs_llc = int(served[2])
            fig.served += served
        fig.walk_refs = int((~is_data).sum())
        fig.est_ns = float(fig.served @ np.array([lat.l1, lat.l2, lat.llc, lat.dram]))
        fig.est_ns += fig.tlb_misses * lat.tlb_l2 + fig.walks * lat.walk
        return fig

    def _references(self, ident: np.ndarray, leaf: np.ndarray, walk_level: np.ndarray, addrs: np.ndarray,
                    shifts: np.ndarray, gpa: np.ndarray, data_key: np.ndarray,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The line each access reads, in order: its walk's entries top-down, then its data.

        Under nested paging (``cpu.host_page``) each guest entry is preceded by the host's leaf
        entry that translates the guest table's guest-physical page, and the walk ends with the
        host entry for the data's page: a two-dimensional walk whose host upper levels are taken
        to hit the nested paging-structure caches.  The host maps guest-physical memory in order,
        so a line of its entries serves 8 consecutive guest frames: the frames of a hugetlb folio
        are consecutive, but the guest's page allocator hands out 4 KiB frames one at a time from
        wherever they are free, so each 4 KiB data page's host entry is taken to be in a line of
        its own (the simulator numbers frames in order, which no long-running guest does).
        Returns (keys, is_data, owning access, and the level of each guest entry read, -1 for the
        data and host entries).
        """
        nested = bool(self.cpu.host_page)
        nwalk = np.where(walk_level >= 0, walk_level - leaf + 1, 0)
        nrefs = np.where(nwalk > 0, 2 * nwalk + 1, 0) if nested else nwalk
        total = nrefs + 1
        owner = np.repeat(np.arange(len(addrs)), total)
        step_in = np.arange(len(owner)) - (np.cumsum(total) - total)[owner]
        is_data = step_in == nrefs[owner]
        keys = np.empty(len(owner), dtype=np.uint64)
        keys[is_data] = data_key
        if nested:
            host_shift = self.cpu.host_page.bit_length() - 1 + 3  # 8 host entries a line
            host_data = ~is_data & (step_in == nrefs[owner] - 1)
            guest = ~is_data & ~host_data & (step_in % 2 == 1)
            host_table = ~is_data & ~host_data & ~guest
            of = owner[host_data]
            keys[host_data] = mix(np.full(len(of), _HOST_ROOT, dtype=np.uint64),
                                  gpa[of] >> np.where(leaf[of] == 0, PAGE_SHIFT, host_shift))
            ho = owner[host_table]
            hl = walk_level[ho] - step_in[host_table] // 2
            keys[host_table] = mix(mix(np.full(len(ho), _HOST_ROOT, dtype=np.uint64), 1), ident[hl, ho])
            depth = step_in // 2
        else:
            guest = ~is_data
            depth = step_in
        go = owner[guest]
        gl = walk_level[go] - depth[guest]
        keys[guest] = mix(ident[gl, go], ((addrs[go] >> shifts[gl]) & 511) >> 3)
        guest_level = np.full(len(owner), -1, dtype=np.int64)
        guest_level[guest] = gl
        return keys, is_data, owner, guest_level

    def _caches(self, keys: np.ndarray, ref_cpu: np.ndarray) -> np.ndarray:
        """Where each reference is served: 0 L1d, 1 L2, 2 LLC, 3 DRAM; -1 for an L2 miss whose
        line the LLC sample does not hold (counted, scaled, through the sampled ones)."""
        cpu = self.cpu
        level = np.full(len(keys), -1, dtype=np.int8)
        for c, st in enumerate(self.cpus):
            on = np.flatnonzero(ref_cpu == c)
            if len(on):
                d = st.cache.access(keys[on])
                level[on] = np.where(d < cpu.lines(cpu.l1d), 0, np.where(d < cpu.lines(cpu.l2), 1, -1))
        sampled = (keys >> np.uint64(40)) % np.uint64(self.llc_rate) == 0
        d = self.llc.access(keys[sampled])
        beyond = np.flatnonzero(sampled & (level < 0))
        hit = np.zeros(len(keys), dtype=bool)
        hit[np.flatnonzero(sampled)[d < self.llc.capacity]] = True
        level[beyond] = np.where(hit[beyond], 2, 3)
        return np.where(level < 0, 4, level)  # 4: not sampled beyond L2 (bincount drops it below)

    # --- reporting -----------------------------------------------------------------------------

    def of_process(self, name: str) -> dict[str, int]:
        """A process's cumulative figures, in the JSON contract."""
        return self.per_process.get(name, Figures()).to_json()

    def take_step(self) -> Figures:
        """The figures since the last call (one scenario step's)."""
        out, self.step = self.step, Figures()
        self.seen = self.simulated = 0
        self.pool = Figures()
        return out
