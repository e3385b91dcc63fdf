"""Models ``struct mm_struct`` (an address space) and ``struct task_struct`` (a process)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from ..arch import TABLE_BYTES
from .vma import VMA


def _vm_start(vma: VMA) -> int:
    return vma.vm_start


def _vm_end(vma: VMA) -> int:
    return vma.vm_end


@dataclass(frozen=True)
class FreeAreaCache:
    """What the last top-down search below ``high`` learnt (the role of the maple tree's gap
    tracking; close to 2.6-era ``free_area_cache``/``cached_hole_size``): every free gap that
    starts at or above ``below`` (and ends at or below ``high``) is at most ``max_hole`` bytes."""

    high: int
    below: int
    max_hole: int


@dataclass(eq=False)
class MM:
    """An address space: its VMAs (sorted by ``vm_start``), the root of its page tables and counters.

    ``nr_ptes``, ``nr_pmds`` and ``nr_puds`` are the tables the mm references, as
    ``mm_pgtables_bytes()`` counts them for VmPTE (shared tables included, the PGD excluded).
    ``nr_shared`` counts the tables it attached from another mm (McCracken's ``nr_shpte``, shown as
    VmSHPT): tables it uses but did not allocate.
    """

    id: int
    pgd: int  # content id of the PGD in the top-level store
    mmap_base: int
    task_size: int
    map_window: int
    vmas: list[VMA] = field(default_factory=list)
    nr_ptes: int = 0
    nr_pmds: int = 0
    nr_puds: int = 0
    nr_shared: int = 0
    boxes: set[int] = field(default_factory=set)  # shared tables above the PTE level this mm uses
    dead: bool = False
    free_area_cache: FreeAreaCache | None = None  # see get_unmapped_area(); dropped when a gap grows

    def __hash__(self) -> int:
        return self.id

    @property
    def pgtables_bytes(self) -> int:
        return (self.nr_ptes + self.nr_pmds + self.nr_puds) * TABLE_BYTES

    # --- the VMA tree (a sorted list stands in for the maple tree) ----------------------------

    def _index(self, addr: int, *, right: bool = True) -> int:
        """Bisect ``vmas`` by ``vm_start`` (O(log n), no list of starts built)."""
        bisect_at = bisect.bisect_right if right else bisect.bisect_left
        return bisect_at(self.vmas, addr, key=_vm_start)

    def find_vma(self, addr: int) -> VMA | None:
        """Models find_vma(): the first VMA with ``vm_end > addr``."""
        i = self._index(addr) - 1
        if i >= 0 and self.vmas[i].vm_end > addr:
            return self.vmas[i]
        return self.vmas[i + 1] if i + 1 < len(self.vmas) else None

    def vma_lookup(self, addr: int) -> VMA | None:
        """Models vma_lookup(): the VMA containing ``addr``."""
        vma = self.find_vma(addr)
        return vma if vma is not None and vma.vm_start <= addr else None

    def vmas_between(self, start: int, end: int) -> list[VMA]:
        """VMAs intersecting [start, end), in address order (O(log n + found))."""
        vmas = self.vmas
        i = bisect.bisect_right(vmas, start, key=_vm_end)  # the first VMA ending above start
        out = []
        while i < len(vmas) and vmas[i].vm_start < end:
            out.append(vmas[i])
            i += 1
        return out

    def index_of(self, vma: VMA) -> int:
        """The position of ``vma`` in ``vmas`` (O(log n): VMAs do not overlap, so starts are unique)."""
        i = self._index(vma.vm_start, right=False)
        if i == len(self.vmas) or self.vmas[i] is not vma:
            raise ValueError(f"{vma!r} is not in this mm")
        return i

    def prev_next(self, start: int, end: int) -> tuple[VMA | None, VMA | None]:
        """The VMAs just below ``start`` and just above ``end`` (for free_pgtables floor/ceiling)."""
        i = bisect.bisect_right(self.vmas, start, key=_vm_end)  # VMAs before i end at or below start
        prev = self.vmas[i - 1] if i else None
        j = self._index(end, right=False)
        nxt = self.vmas[j] if j < len(self.vmas) else None
        return prev, nxt

    def insert_vma(self, vma: VMA) -> None:
        i = self._index(vma.vm_start, right=False)
        self.vmas.insert(i, vma)
        if vma.obj is not None:
            vma.obj.i_mmap.add(vma)

    def remove_vma(self, vma: VMA) -> None:
        del self.vmas[self.index_of(vma)]
        cache = self.free_area_cache
        if cache is not None and vma.vm_end > cache.below:  # a gap the cache vouches for grows
            self.free_area_cache = None
        if vma.obj is not None:
            vma.obj.i_mmap.discard(vma)


@dataclass(eq=False)
class Task:
    """A process: a name from the scenario, its mm, and its fault counters."""

    pid: int
    name: str
    mm: MM
    parent: Task | None = None
    minflt: int = 0
    alive: bool = True
    killed_by: str | None = None  # "SIGSEGV", "SIGBUS", "OOM" when the model killed it

    def __repr__(self) -> str:
        return f"<Task {self.name} pid={self.pid}{'' if self.alive else ' exited'}>"
