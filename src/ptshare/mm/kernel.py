"""The state of the modelled kernel: memory, page-table stores, processes, objects and the policy.

Private to the core.  :class:`ptshare.System` is the public face; the operations themselves
live in the modules named after the kernel files they model (memory.py, fork.py, mmap.py...).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np

from ..arch import Geometry
from .events import Events
from .frames import DEFAULT_FRAMES_IN_ORDER, DEFAULT_SCATTERED, FrameTable
from .mm_struct import MM, Task
from .pgtable import DirStore, PteStore, SharedTables

if TYPE_CHECKING:
    from ..policies.base import Policy
    from .pagecache import AddressSpace


class Kernel:
    """Everything the operations act on."""

    def __init__(self, geom: Geometry, policy: Policy, memory: int | None, cpus: int, aslr_bits: int,
                 seed: int, scattered: int = DEFAULT_SCATTERED, frames_in_order: int = DEFAULT_FRAMES_IN_ORDER):
        self.geom = geom
        self.task_size = geom.task_size  # the top of user space; System(task_size=) may put it lower
        self.policy = policy
        self.cpus = cpus
        self.aslr_bits = aslr_bits
        self.rng = np.random.default_rng(seed)
        self.frames = FrameTable(memory, scattered, frames_in_order, seed)
        self.events = Events()
        self.offpath = Events()  # of ``events``, the work done off the caller's path (mm/asyncfork.py)
        self.background: list = []  # page-table copies fork left to the child (mm/asyncfork.py)
        self.shared = SharedTables()
        pte = PteStore()
        self.stores: list = [pte]
        for _ in geom.levels[1:]:
            self.stores.append(DirStore(self.stores[-1], self.shared))
        self.shared.stores = dict(enumerate(self.stores))
        self.tasks: list[Task] = []
        self.objects: dict[int, AddressSpace] = {}  # by id, in creation order
        self._pids = itertools.count(1)
        self._mm_ids = itertools.count(1)
        self._object_ids = itertools.count(1)
        self.write_seq = 0
        self.share_index: dict[tuple, np.ndarray] = {}  # shareable tables by partner key (ptshare.py)
        self.share_where: dict[int, tuple[tuple, int]] = {}
        self.read_log: list[tuple[str, np.ndarray, np.ndarray]] | None = None  # (task, addrs, stamps)
        self.flush_all_pending = False  # an unshare since the last tlb_finish()
        self.flush_mm_pending: set[int] = set()  # mms whose entries changed since the last tlb_finish()
        self.thp = "madvise"  # /sys/kernel/mm/transparent_hugepage/enabled: always | madvise | never
        self.thp_use_zero_page = True  # /sys/kernel/mm/transparent_hugepage/use_zero_page

    @property
    def top(self) -> DirStore:
        return self.stores[-1]

    def new_mm(self, mmap_base: int) -> MM:
        """mm_alloc(): an empty address space with its PGD (counted in NR_PAGETABLE, not VmPTE)."""
        self.frames.alloc_pgtables(1)
        self.events.add("pgtable_alloc")
        pgd = self.top.new()
        return MM(id=next(self._mm_ids), pgd=pgd, mmap_base=mmap_base, task_size=self.task_size,
                  map_window=self.geom.map_window)

    def free_mm(self, mm: MM) -> None:
        """mmdrop(): release the PGD once exit_mmap() has freed everything below it."""
        self.top.put(mm.pgd)
        mm.pgd = 0
        self.frames.free_pgtables(1)
        self.events.add("pgtable_free")
        mm.dead = True

    def flush_tlb_mm(self, mm: MM) -> None:
        """``mm``'s entries were cleared, write-protected or moved: its CPUs flush at the end of the operation."""
        self.flush_mm_pending.add(mm.id)

    def tlb_finish(self) -> None:
        """End of an operation: the TLB flushes it owes, batched as ``tlb_finish_mmu()`` batches them.

        One flush per mm whose entries it changed (munmap, mprotect, mremap and MADV_DONTNEED
        gather their whole range; fork flushes the parent once, in ``dup_mmap``; exit once), and
        one on every CPU if it unshared any table: unsharing leaves other CPUs holding stale
        paging-structure entries, however many tables it let go (``pt_unshared`` counts those).
        """
        if self.flush_mm_pending:
            self.events.add("tlb_flush_mm", len(self.flush_mm_pending))
            self.flush_mm_pending.clear()
        if self.flush_all_pending:
            self.flush_all_pending = False
            self.events.add("tlb_flush_all")

    def new_pid(self) -> int:
        return next(self._pids)

    def new_object_id(self) -> int:
        return next(self._object_ids)
