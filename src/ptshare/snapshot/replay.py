"""Rebuilding a snapshot in the simulator: the same VMAs at the same addresses, the same pages present.

Every process of the snapshot is *spawned* and maps its VMAs with ``MAP_FIXED``; processes that
map the same object map the same simulated object.  They are not rebuilt as forks of one another,
even when the real ones were (PostgreSQL backends are children of the postmaster): a replayed fork
would copy the parent's anonymous page tables as they are now, not as they were when the real
child was forked, and the child may since have unmapped or never touched them.  What makes
processes partners for a sharing design is kept exactly: the same object at the same virtual
address with the same flags and offset, which is what inheriting a mapping through fork gives.

Pages are made present the way a process makes them present: a write fault for anonymous pages
and copies made on write, a read fault for page-cache pages and the zero page; a range of private
anonymous memory that a huge PMD maps takes one fault, which maps a transparent huge page (written)
or the huge zero page (read).  Deliberate
shortcut: fault-around is switched off while replaying (:func:`exact_faults`), since it would map
page-cache neighbours the real process does not have; it never adds a page table (it stays inside
one PTE table), and it is switched back on before anything is measured.

Under a policy that keeps tables in a host mm (``mshare``), a live system has no mshare region to
replay, so the replay assumes one (:func:`region_candidates`): each shmem object that two or more
processes map shared is placed in an mshare region of its own (its size rounded up to 512 GiB),
and every process that maps it maps the whole region, where the region's rules put it (a multiple
of 512 GiB, not the real address), and reads and writes the same pages of the object as the real
one did.  Its mappings keep the widest rights the replay needs (mprotect of a region is refused).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from ..arch import PAGE_SHIFT, PAGE_SIZE
from ..errors import PtshareError
from ..mm.access import Accesses
from ..mm.pagecache import MSHARE_ALIGN
from ..policies.base import Policy
from ..system import SimulationError, System
from .model import ANON, SPECIAL, ProcessSnap, Snapshot, VmaSnap
from .pageset import PageSet, mask_runs

HPAGE_SIZE = 2 << 20
CHUNK_PAGES = 1 << 18  # pages handled at once (1 GiB of addresses): bounds the memory of a replay
FEW_RUNS = 64  # below this many runs in a chunk, touch run by run; above, by explicit addresses
USER_4LEVEL = 1 << 47


class ReplayError(PtshareError):
    """A process of the snapshot could not be rebuilt in the simulator (a bug, or a mapping it cannot model)."""


def sim_prot(perms: str) -> str:
    """The simulator's protection for maps ``perms``: write and exec imply read (``-w-`` -> ``rw``)."""
    r, w, x = (perms[i] != "-" for i in range(3))
    return ("r" if r or w or x else "") + ("w" if w else "") + ("x" if x else "")


def object_name(index: int) -> str:
    return f"obj{index}"


@contextmanager
def exact_faults(policy: Policy) -> Iterator[None]:
    """Fault-around off for the replay (see the module docstring)."""
    policy.fault_around_pages = 1
    try:
        yield
    finally:
        del policy.fault_around_pages


def region_candidates(snapshot: Snapshot) -> set[int]:
    """The objects an mshare policy is assumed to place in regions: shmem mapped shared by two or
    more processes (see the module docstring)."""
    users: dict[int, set[int]] = {}
    for proc in snapshot.processes:
        for v in proc.vmas:
            if v.object >= 0 and v.kind == "shmem" and v.perms[3] == "s":
                users.setdefault(v.object, set()).add(proc.pid)
    return {n for n, pids in users.items() if len(pids) > 1}


def new_system(snapshot: Snapshot, policy: Policy) -> System:
    """An empty machine with the snapshot's objects (in mshare regions where ``policy`` keeps
    tables in a host mm: :func:`region_candidates`)."""
    top = max((v.end for p in snapshot.processes for v in p.vmas), default=0)
    system = System(policy, aslr_bits=0, levels=5 if top > USER_4LEVEL - PAGE_SIZE else 4)
    regions = region_candidates(snapshot) if policy.host_levels else set()
    for n, obj in enumerate(snapshot.objects):
        size = max(obj.size, PAGE_SIZE)
        if n in regions:
            system.create_object(object_name(n), "mshare", size, region=-(-size // MSHARE_ALIGN) * MSHARE_ALIGN)
        else:
            system.create_object(object_name(n), obj.kind, size)
    return system


def _region_start(system: System, name: str, vma: VmaSnap, prot: str) -> int | None:
    """Where ``vma``'s page at object offset 0 is in process ``name``: in the mshare region its
    object was placed in (mapped whole the first time), or None if the object is in none."""
    obj = system.object(object_name(vma.object))
    if not obj.is_mshare:
        return None
    for mapped in system.task(name).mm.vmas:
        if mapped.obj is obj:
            return mapped.vm_start
    return system.mmap(name, obj.region, object=obj.name, shared=True, prot=prot)


def replay_process(system: System, name: str, proc: ProcessSnap, warnings: list[str]) -> None:
    """Spawn ``name`` with the VMAs and present pages of ``proc``."""
    system.spawn(name)
    for vma in proc.vmas:
        try:
            map_vma(system, name, vma, vma.mapped, vma.written)
        except SimulationError as exc:
            warnings.append(f"process {proc.pid}: {vma.path or '[anon]'} at {vma.start:#x} left out: {exc}")


def map_vma(system: System, name: str, vma: VmaSnap, pages: PageSet, written: PageSet) -> None:
    """Map ``vma`` at its address in ``name`` and fault in ``pages`` (``written`` by writes, the rest by reads)."""
    prot = sim_prot(vma.perms)
    need_write = written.count() > 0
    need_read = pages.count() > written.count()
    # Faulting needs the access allowed: map wider, fault, then mprotect back (as ld.so does for RELRO).
    wide = ("r" if prot or need_read or need_write else "") + ("w" if "w" in prot or need_write else "")
    wide += "x" if "x" in prot else ""
    size = vma.end - vma.start
    start = vma.start
    region = _region_start(system, name, vma, wide) if vma.object >= 0 else None
    if region is not None:
        start = region + vma.offset
    elif vma.kind in (ANON, SPECIAL):
        system.mmap(name, size, prot=wide, addr=vma.start, fixed=True)
    else:
        system.mmap(name, size, object=object_name(vma.object), offset=vma.offset, shared=vma.shared,
                    prot=wide, addr=vma.start, fixed=True)
    huge = vma.kind == "hugetlb"
    thp = vma.thp if vma.kind == ANON else None
    for lo, mask in pages.chunks(CHUNK_PAGES):
        write_mask = written.mask(lo, lo + len(mask)) if need_write else np.zeros(len(mask), dtype=bool)
        if thp is not None:
            mask = mask & ~thp.mask(lo, lo + len(mask))
        for write, sel in ((True, write_mask & mask), (False, mask & ~write_mask)):
            if sel.any():
                _touch(system, name, start + (lo << PAGE_SHIFT), sel, write, huge)
    if thp is not None:
        _touch_thp(system, name, vma.start, thp, written)
    if wide != prot and region is None:
        system.mprotect(name, vma.start, size, prot)


def _touch_thp(system: System, name: str, base: int, thp: PageSet, written: PageSet) -> None:
    """Map the huge PMDs of ``thp``: one fault at the start of each 2 MiB, a write where the pages
    were written (a transparent huge page), a read where not (the huge zero page).  The machine is
    switched to ``thp = "always"`` for it, so that the VMA needs no advice the real one may not have had."""
    k = system.k
    mode = k.thp
    k.thp = "always"
    try:
        for lo, mask in thp.chunks(CHUNK_PAGES):
            idx = np.flatnonzero(mask)
            addrs = base + ((lo + idx).astype(np.int64) << PAGE_SHIFT)
            heads = addrs % HPAGE_SIZE == 0
            wrote = written.mask(lo, lo + len(mask))[idx[heads]]
            for write in (True, False):
                at = addrs[heads][wrote == write]
                if len(at):
                    _check_signal(name, system.access(name, Accesses.explicit(at), write=write))
    finally:
        k.thp = mode


def _check_signal(name: str, signal) -> None:
    if signal is not None:
        raise ReplayError(f"replaying process {name}: the simulator killed it with {signal.signal} at "
                          f"{signal.addr:#x} ({signal.reason}); this is a bug in ptshare's replay")


def _touch(system: System, name: str, base: int, sel: np.ndarray, write: bool, huge: bool) -> None:
    if huge:  # one fault per 2 MiB page
        first = np.unique(np.flatnonzero(sel) >> 9) << 9
        sel = np.zeros(len(sel), dtype=bool)
        sel[first] = True
    starts, lengths = mask_runs(sel)
    if len(starts) <= FEW_RUNS:
        batches = [Accesses.progression(base + (int(s) << PAGE_SHIFT), base + (int(s + n) << PAGE_SHIFT))
                   for s, n in zip(starts, lengths, strict=True)]
    else:
        batches = [Accesses.explicit(base + (np.flatnonzero(sel).astype(np.int64) << PAGE_SHIFT))]
    for acc in batches:
        _check_signal(name, system.access(name, acc, write=write))
