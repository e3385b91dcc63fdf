"""The simulated machine, as a Python API: processes and objects by name, system calls, metrics.

>>> from ptshare import System
>>> s = System(policy="linux")
>>> s.spawn("db")
>>> seg = s.mmap("db", "1GiB", shared=True)
>>> s.touch("db", seg, write=True)
>>> s.fork("db", "backend")
>>> s.touch("backend", seg)
>>> s.process("backend")["minflt"]
16384

Everything a scenario file can do is a method here; :mod:`ptshare.scenario` only translates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arch import PAGE_SIZE, TABLE_BYTES, geometry
from .errors import MmError, PtshareError
from .mm import asyncfork as _asyncfork
from .mm import fork as _fork
from .mm import mmap as _mmap
from .mm import mprotect as _mprotect
from .mm import mremap as _mremap
from .mm import mshare as _mshare
from .mm import ptshare as _ptshare
from .mm import truncate as _truncate
from .mm.access import Accesses
from .mm.frames import DEFAULT_FRAMES_IN_ORDER, DEFAULT_SCATTERED, OutOfMemory
from .mm.huge_memory import THP_MODES
from .mm.kernel import Kernel
from .mm.memory import handle_mm_fault_range
from .mm.mm_struct import Task
from .mm.pagecache import HUGETLB, KINDS, MSHARE, MSHARE_ALIGN, AddressSpace
from .mm.vma import VM_READ, VM_WRITE, prot_to_flags
from .policies import get_policy
from .policies.base import Policy
from .units import parse_size


class SimulationError(PtshareError):
    """An operation the modelled kernel refuses (EINVAL, ENOMEM...) or one naming something unknown."""


@dataclass(frozen=True)
class Signal:
    """A fault the model could not resolve: the process was killed by ``signal`` at ``addr``."""

    signal: str
    addr: int
    reason: str


def _eof_addr(vma) -> int:
    """The first address of ``vma`` past the end of the file it maps (its end if anonymous)."""
    if vma.obj is None:
        return vma.vm_end
    pages = vma.obj.nr_pages * (vma.obj.page_size // PAGE_SIZE) - vma.vm_pgoff
    return vma.vm_start + max(0, pages) * PAGE_SIZE


def _size(value: int | str, what: str) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise SimulationError(f"{what}: {exc}") from None


class System:
    """A machine running one policy.  See the module docstring for an example."""

    def __init__(self, policy: str | Policy = "linux", *, memory: int | str | None = None, cpus: int = 2,
                 aslr_bits: int = 28, seed: int = 1, levels: int = 4, mmap_base: int | str | None = None,
                 thp: str = "madvise", task_size: int | None = None, check: bool = False,
                 translation: bool | dict = False, scattered: int | str = DEFAULT_SCATTERED,
                 frames_in_order: int = DEFAULT_FRAMES_IN_ORDER) -> None:
        self.policy = get_policy(policy) if isinstance(policy, str) else policy
        mem = None if memory is None else _size(memory, "memory")
        if not 0 <= aslr_bits <= 32:
            raise SimulationError(f"aslr_bits must be between 0 and 32, not {aslr_bits}")
        self.k = Kernel(geometry(levels), self.policy, mem, cpus, aslr_bits, seed, _size(scattered, "scattered"),
                        frames_in_order)
        if thp not in THP_MODES:
            raise SimulationError(f"thp must be one of {', '.join(THP_MODES)}, not {thp!r}")
        self.k.thp = thp
        self.fixed_mmap_base = None if mmap_base is None else _size(mmap_base, "mmap_base")
        if task_size is not None:  # an address space whose top is taken (the host's own-layout runs)
            if not 0 < task_size <= self.k.geom.task_size:
                raise SimulationError(f"task_size {task_size:#x} is not inside the user address space")
            self.k.task_size = task_size
        self.check = check
        if check:
            self.k.read_log = []
        self.signals: list[tuple[str, Signal]] = []
        self._final: dict[str, dict] = {}  # last metrics of each process, kept after it exits
        self._tasks: dict[str, Task] = {}
        self._objects: dict[str, AddressSpace] = {}
        self.translation = None
        if translation is True or isinstance(translation, dict):  # {}: on, with the defaults
            from .translation import Translation

            self.translation = Translation(self.k, **(translation if isinstance(translation, dict) else {}))

    # --- lookup ----------------------------------------------------------------------------------

    def task(self, name: str) -> Task:
        """The live process ``name``.  Every operation finds its process here, so this is where a
        child whose page tables async-fork is still copying waits for the copy to finish."""
        task = self._tasks.get(name)
        if task is None:
            known = ", ".join(sorted(self._tasks)) or "none yet"
            raise SimulationError(f"no process named {name!r} (processes: {known})")
        if not task.alive:
            why = f" (killed by {task.killed_by})" if task.killed_by else ""
            raise SimulationError(f"process {name!r} has exited{why}; it can do nothing more")
        _asyncfork.wait_copy(self.k, task)
        return task

    def object(self, name: str) -> AddressSpace:
        obj = self._objects.get(name)
        if obj is None:
            known = ", ".join(sorted(self._objects)) or "none"
            raise SimulationError(f"no object named {name!r} (objects: {known})")
        return obj

    @property
    def task_names(self) -> list[str]:
        return list(self._tasks)

    def _new_name(self, name: str) -> None:
        if name in self._tasks:
            raise SimulationError(f"a process named {name!r} already exists; names must be unique")

    def _after(self) -> None:
        if self.translation is not None:
            self.translation.flush(self.k.flush_mm_pending, self.k.flush_all_pending)
        _asyncfork.settle(self.k)
        self.k.tlb_finish()
        if self.check:
            from .oracle.invariants import check

            check(self)

    # --- objects ---------------------------------------------------------------------------------

    def create_object(self, name: str, kind: str, size: int | str, *, region: int | str | None = None) -> None:
        """A named shmem segment (``/dev/shm`` file, SysV segment), regular file, hugetlbfs file or mshare
        region (an msharefs file of ``region`` bytes -- by default the smallest multiple of 512 GiB that
        holds ``size`` -- with ``size`` bytes of shared anonymous memory placed at its start)."""
        if name in self._objects:
            raise SimulationError(f"an object named {name!r} already exists")
        if kind not in KINDS:
            raise SimulationError(f"object kind {kind!r} is not one of {', '.join(KINDS)}")
        nbytes = _size(size, "object size")
        page = self.k.geom.hpage_size if kind == HUGETLB else PAGE_SIZE
        if kind == HUGETLB and nbytes % page:
            raise SimulationError(f"hugetlb object {name!r}: size must be a multiple of 2 MiB, not {nbytes}")
        if region is not None and kind != MSHARE:
            raise SimulationError(f"object {name!r}: only an mshare object has a region")
        span = 0
        if kind == MSHARE:
            span = -(-nbytes // MSHARE_ALIGN) * MSHARE_ALIGN if region is None else _size(region, "region")
            if span % MSHARE_ALIGN or span < nbytes:
                raise SimulationError(f"mshare object {name!r}: EINVAL: its region must be a multiple of 512 GiB "
                                      f"that holds its {nbytes} bytes, not {span}")
        obj = AddressSpace(id=self.k.new_object_id(), name=name, kind=kind, size=nbytes, page_size=page, region=span)
        self.k.objects[obj.id] = obj
        self._objects[name] = obj

    # --- processes -------------------------------------------------------------------------------

    def spawn(self, name: str) -> None:
        """A new process from exec: an empty address space with its own randomised mmap_base."""
        self._new_name(name)
        mm = self._run(None, lambda: self.k.new_mm(self._mmap_base()))
        task = Task(pid=self.k.new_pid(), name=name, mm=mm)
        self.k.tasks.append(task)
        self._tasks[name] = task
        self._after()

    def fork(self, parent: str, child: str) -> None:
        task = self.task(parent)
        self._new_name(child)
        self._tasks[child] = self._run(task, lambda: _fork.dup_mmap(self.k, task, child))
        self._after()

    def exec(self, name: str) -> None:
        task = self.task(name)
        self._run(task, lambda: _fork.do_exec(self.k, task, self._mmap_base()))
        self._after()

    def exit(self, name: str) -> None:
        task = self.task(name)
        self._metrics(task)
        _fork.do_exit(self.k, task)
        self._after()

    def _mmap_base(self) -> int:
        if self.fixed_mmap_base is not None:
            return self.fixed_mmap_base
        return _mmap.mmap_base(self.k, self.k.geom.task_size)

    def _run(self, task: Task | None, op):
        try:
            return op()
        except (MmError, OutOfMemory) as exc:
            self.k.tlb_finish()
            raise SimulationError(str(exc)) from None

    # --- mappings --------------------------------------------------------------------------------

    def mmap(self, name: str, size: int | str | None = None, *, object: str | None = None,
             offset: int | str = 0, shared: bool = False, prot: str = "rw", addr: int | str | None = None,
             fixed: bool = False, align: int | str | None = None) -> int:
        """Map anonymous memory or an object; returns the start address."""
        task = self.task(name)
        obj = self.object(object) if object is not None else None
        off = _size(offset, "offset")
        if size is None:
            if obj is None:
                raise SimulationError("anonymous mmap needs a size")
            length = (obj.region or obj.size) - off  # an mshare region is mapped whole
        else:
            length = _size(size, "size")
        if length <= 0:
            raise SimulationError(f"mmap size must be more than 0 (offset {off} leaves {length})")
        try:
            flags = prot_to_flags(prot)
        except ValueError as exc:
            raise SimulationError(str(exc)) from None
        hint = 0 if addr is None else _size(addr, "addr")
        if fixed and addr is None:
            raise SimulationError("fixed = true needs an addr")
        alignment = 0 if align is None else _size(align, "align")
        if alignment and (alignment & (alignment - 1) or alignment < PAGE_SIZE):
            raise SimulationError(f"align must be a power of two of at least 4 KiB, not {alignment}")

        def op() -> int:
            if alignment and not fixed:
                return self._mmap_aligned(task, length, flags, obj, off, shared, hint, alignment)
            return _mmap.do_mmap(self.k, task.mm, length, flags, obj=obj, offset=off, shared=shared,
                                 addr=hint, fixed=fixed)

        start = self._run(task, op)
        self._after()
        return start

    def _mmap_aligned(self, task: Task, length: int, flags: int, obj, off: int, shared: bool, hint: int,
                      alignment: int) -> int:
        """Map ``length`` bytes at an ``alignment`` boundary as a program gets one from plain mmap
        calls: reserve ``length + alignment`` bytes of inaccessible private memory where the
        kernel chooses, unmap the reservation, and map at the first aligned address in it."""
        k = self.k
        if obj is not None and obj.is_hugetlb:
            alignment = max(alignment, k.geom.hpage_size)
        addr = _mmap.get_unmapped_area(k, task.mm, hint, length + alignment, 0, None, False)
        start = -(-addr // alignment) * alignment
        _mmap.do_mmap(k, task.mm, length, flags, obj=obj, offset=off, shared=shared, addr=start, fixed=True)
        return start

    def munmap(self, name: str, addr: int, length: int | str) -> None:
        task = self.task(name)
        self._run(task, lambda: _mmap.do_munmap(self.k, task.mm, addr, _size(length, "length")))
        self.k.events.add("munmap")
        _asyncfork.range_changed(self.k, task.mm, addr, _size(length, "length"))
        self._after()

    def mprotect(self, name: str, addr: int, length: int | str, prot: str) -> None:
        task = self.task(name)
        try:
            flags = prot_to_flags(prot)
        except ValueError as exc:
            raise SimulationError(str(exc)) from None
        self._run(task, lambda: _mprotect.do_mprotect(self.k, task.mm, addr, _size(length, "length"), flags))
        self.k.events.add("mprotect")
        _asyncfork.range_changed(self.k, task.mm, addr, _size(length, "length"))
        self._after()

    def madvise_dontneed(self, name: str, addr: int, length: int | str) -> None:
        task = self.task(name)
        self._run(task, lambda: _mprotect.do_madvise_dontneed(self.k, task.mm, addr, _size(length, "length")))
        self.k.events.add("madvise")
        _asyncfork.range_changed(self.k, task.mm, addr, _size(length, "length"))
        self._after()

    def madvise_thp(self, name: str, addr: int, length: int | str, advice: str) -> None:
        """madvise(MADV_HUGEPAGE) (``advice="hugepage"``) or MADV_NOHUGEPAGE (``"nohugepage"``)."""
        if advice not in ("hugepage", "nohugepage"):
            raise SimulationError(f"advice must be 'hugepage' or 'nohugepage', not {advice!r}")
        task = self.task(name)
        self._run(task, lambda: _mprotect.do_madvise_hugepage(self.k, task.mm, addr, _size(length, "length"),
                                                              advice == "hugepage"))
        self.k.events.add("madvise")
        self._after()

    def mremap(self, name: str, addr: int, old_size: int | str, new_size: int | str,
               new_addr: int | None = None) -> int:
        task = self.task(name)
        new = self._run(task, lambda: _mremap.do_mremap(self.k, task.mm, addr, _size(old_size, "size"),
                                                          _size(new_size, "size"), new_addr))
        self.k.events.add("mremap")
        _asyncfork.range_changed(self.k, task.mm, addr, _size(old_size, "size"))
        self._after()
        return new

    def truncate(self, object: str, size: int | str) -> None:
        obj = self.object(object)
        nbytes = _size(size, "size")
        try:
            _truncate.do_truncate(self.k, obj, nbytes)
        except ValueError as exc:
            raise SimulationError(str(exc)) from None
        self._after()

    # --- memory accesses -------------------------------------------------------------------------

    def touch(self, name: str, addr: int, length: int | str | None = None, *, write: bool = False,
              stride: int | str = PAGE_SIZE) -> Signal | None:
        """Access every ``stride``-th byte of [addr, addr + length) in order (default: the mapping)."""
        task = self.task(name)
        if length is None:
            vma = task.mm.vma_lookup(addr)
            if vma is None:
                raise SimulationError(f"touch: nothing is mapped at {addr:#x} in {name!r}")
            length = vma.vm_end - addr
        nbytes = _size(length, "length")
        step = _size(stride, "stride")
        if step < PAGE_SIZE or step % PAGE_SIZE:
            raise SimulationError(f"stride must be a multiple of 4 KiB, not {step}")
        return self.access(name, Accesses.progression(addr, addr + nbytes, step), write=write)

    def access(self, name: str, acc: Accesses, *, write: bool = False) -> Signal | None:
        """Perform the accesses ``acc`` in order.  Returns the signal that killed the process, if one did.

        An access outside every VMA, or one the VMA's protection forbids, is a SIGSEGV; one past
        the end of the file a VMA maps is a SIGBUS.  The accesses before it happen; the process is
        then killed, as the kernel would kill it.
        """
        task = self.task(name)
        mm = task.mm
        self.k.write_seq += 1  # what this touch writes is stamped with its sequence number
        allowed = VM_WRITE if write else VM_READ
        ok: list[tuple[int, int]] = []
        for vma in mm.vmas_between(*acc.bounds()):
            end = min(vma.vm_end, _eof_addr(vma)) if vma.vm_flags & allowed else vma.vm_start
            if end <= vma.vm_start:
                continue
            if ok and ok[-1][1] == vma.vm_start:
                ok[-1] = (ok[-1][0], end)
            else:
                ok.append((vma.vm_start, end))
        n_ok = acc.first_outside(ok)
        valid = acc.prefix(n_ok)
        self.k.events.add("accesses", len(valid))

        fresh = None
        simulated = self.translation.plan(len(valid)) if self.translation is not None and len(valid) else 0
        if simulated:  # pages the fault path is about to map, of the accesses the model simulates
            from .mm.translate import lookup

            fresh = ~lookup(self.k, mm, valid.materialize()[len(valid) - simulated:])[0]

        def op() -> None:
            if not len(valid):
                return
            for vma in mm.vmas_between(*valid.bounds()):
                sub = valid.within(vma.vm_start, vma.vm_end)
                if len(sub):
                    handle_mm_fault_range(self.k, task, vma, sub, write)

        self._run(task, op)
        if self.translation is not None and len(valid):
            self.translation.access(task, valid, fresh)
        if self.k.read_log is not None:
            from .mm.translate import read_stamps

            addrs = valid.materialize()
            self.k.read_log.append((name, addrs, read_stamps(self.k, mm, addrs)))
        signal = None
        if n_ok < len(acc):
            bad = int(acc.prefix(n_ok + 1).materialize()[-1])
            vma = mm.vma_lookup(bad)
            if vma is None:
                signal = Signal("SIGSEGV", bad, "no mapping at this address")
            elif not vma.vm_flags & allowed:
                signal = Signal("SIGSEGV", bad, f"the mapping does not allow {'writes' if write else 'reads'}")
            else:
                signal = Signal("SIGBUS", bad, "past the end of the file the mapping maps")
            self.signals.append((name, signal))
            self._metrics(task)
            _fork.do_exit(self.k, task, killed_by=signal.signal)
        self._after()
        return signal

    # --- metrics ---------------------------------------------------------------------------------

    def process(self, name: str) -> dict:
        """Counters of one process, alive or not (JSON contract fields and extras)."""
        task = self._tasks.get(name)
        if task is None:
            raise SimulationError(f"no process named {name!r}")
        return self._metrics(task)

    def _metrics(self, task: Task, memo: dict | None = None) -> dict:
        from .mm.rss import rss_pages

        if not task.alive:
            return dict(self._final.get(task.name, {}), alive=False, killed_by=task.killed_by)
        k = self.k
        anon, file, shmem, anon_huge = rss_pages(k, task.mm, memo)
        out = {
            "minflt": task.minflt,
            "vmpte_kb": (_ptshare.vmpte_tables(k, task.mm) - _ptshare.host_tables(k, task.mm)) * TABLE_BYTES // 1024,
            "rss_kb": (anon + file + shmem) * PAGE_SIZE // 1024,
            "alive": True,
            "pid": task.pid,
            "rss_anon_kb": anon * PAGE_SIZE // 1024,
            "rss_file_kb": file * PAGE_SIZE // 1024,
            "rss_shmem_kb": shmem * PAGE_SIZE // 1024,
            "anon_huge_kb": anon_huge * PAGE_SIZE // 1024,
            "pt_shared_kb": _ptshare.attached_tables(k, task.mm) * TABLE_BYTES // 1024,
            "vmas": len(task.mm.vmas),
        }
        if self.translation is not None:
            out["translation"] = self.translation.of_process(task.name)
        self._final[task.name] = out
        return out

    def processes(self) -> dict[str, dict]:
        memo: dict = {}
        return {name: self._metrics(task, memo) for name, task in self._tasks.items()}

    def system(self) -> dict:
        k = self.k
        shared_users = k.shared.users[: k.shared._next]
        return {
            "pagetables_kb": k.frames.nr_pagetables * TABLE_BYTES // 1024,
            "frames_used": k.frames.nr_units,
            "tlb_flush_all": k.events["tlb_flush_all"],
            "memory_used_kb": (k.frames.nr_units + k.frames.nr_pagetables) * 4,
            "shared_tables": int((shared_users >= 2).sum()),
            "pt_shared": k.events["pt_shared"],
            "pt_unshared": k.events["pt_unshared"],
            "pt_cow_shared": k.events["pt_cow_shared"],
            "pt_copied": k.events["pt_copied"],
            "pt_copied_sync": k.events["pt_copied_sync"],
            "pt_copied_background": k.events["pt_copied_background"],
            "ptes_copied": k.events["ptes_copied"],
            "faults": k.events["fault"],
            "cow_copies": k.events["fault_wp_copy"] + k.events["fault_cow"],
            "zero_page_maps": k.events["fault_zero"],
            "signals": len(self.signals),
        }

    def events(self) -> dict[str, int]:
        return self.k.events.as_dict()

    def exit_all(self) -> None:
        """Exit every live process (in creation order)."""
        for name, task in self._tasks.items():
            if task.alive:
                self.exit(name)

    def drop_objects(self) -> None:
        """Unlink every named object: frees its page cache once nothing maps it."""
        for obj in list(self._objects.values()):
            _mshare.unlink_region(self.k, obj)
            if obj.i_mmap:
                raise SimulationError(f"object {obj.name!r} is still mapped")
            pfns = obj.cached_frames()
            obj.resize(0)
            self.k.frames.free(pfns)
            del self.k.objects[obj.id]
        self._objects.clear()

    def read_values(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(process, addresses, values read) of every touch, when the system runs with ``check``."""
        return list(self.k.read_log or [])
