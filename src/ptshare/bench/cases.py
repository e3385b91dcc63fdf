"""The benchmark cases.  Sizes are what the targets name; ``scale`` shrinks them for a quick check."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..scenario import Machine, Scenario

GiB = 1 << 30
TiB = 1 << 40
SGA_BASE = "0x600000000000"  # where the database processes attach their segment (one fixed address)


@dataclass(frozen=True)
class Case:
    name: str
    summary: str
    policies: tuple[str, ...]
    build: Callable[[float], Scenario]
    target_s: float | None = None  # the wall-time target per policy
    target_gib: float | None = None  # the peak-memory target per policy
    host: bool = False  # also run on the real kernel with --vs-host


def _size(nbytes: float, unit: int = 4096) -> str:
    return str(max(unit, int(nbytes) // unit * unit))


def fork_private(scale: float) -> Scenario:
    sc = Scenario("fork-private-4g", "parent writes 4 GiB of private anonymous memory, forks; the child exits",
                  Machine(aslr_bits=0))
    sc.step("spawn", pid="parent")
    sc.step("mmap", pid="parent", vma="heap", size=_size(4 * GiB * scale, 2 << 20))
    sc.step("touch", pid="parent", vma="heap", access="write")
    sc.step("fork", pid="parent", child="child")
    sc.step("exit", pid="child")
    return sc


def fork_shared_read(scale: float) -> Scenario:
    sc = Scenario("fork-shared-4g-read", "parent writes 4 GiB of shared anonymous memory, forks; the child "
                  "reads all of it", Machine(aslr_bits=0))
    sc.step("spawn", pid="parent")
    sc.step("mmap", pid="parent", vma="seg", size=_size(4 * GiB * scale, 2 << 20), shared=True, align="2MiB")
    sc.step("touch", pid="parent", vma="seg", access="write")
    sc.step("fork", pid="parent", child="child")
    sc.step("touch", pid="child", vma="seg")
    return sc


XLAT_SAMPLE = 128  # pgbench-like+translation: beyond a step's first 2**20 accesses, 1 in 128 simulated


def pgbench(backends: int, translation: bool = False) -> Callable[[float], Scenario]:
    machine = Machine(aslr_bits=0, translation=True, translation_sample=XLAT_SAMPLE) if translation else \
        Machine(aslr_bits=0)

    def build(scale: float) -> Scenario:
        size = int(16 * GiB * scale) // (2 << 20) * (2 << 20)
        pages = size // 4096
        sc = Scenario(f"pgbench-like-{backends}", f"postmaster with {size >> 30} GiB of shared buffers forks "
                      f"{backends} backends, each reading a zipf sample of 10% of the pool", machine)
        sc.object("shared_buffers", "shmem", size)
        sc.step("spawn", pid="postmaster")
        sc.step("mmap", pid="postmaster", vma="buffers", object="shared_buffers", shared=True)
        sc.step("touch", pid="postmaster", vma="buffers", access="write")
        sc.step("fork", pid="postmaster", child="backend{i}", repeat=backends)
        sc.step("touch", pid="backend{i}", vma="buffers", pattern="zipf", count=max(1, pages // 10), zipf_s=1.1,
                seed="{i}", repeat=backends)
        return sc
    return build


def sga(scale: float) -> Scenario:
    size = _size(300 * GiB * scale, 2 << 20)
    procs = max(2, int(1500 * scale ** 0.5))
    sc = Scenario("sga-300g", f"a {int(size) >> 30} GiB shmem segment written once, {procs} processes (spawned, "
                  "attaching it at one fixed address, as databases attach their SGA) each reading all of it",
                  Machine(aslr_bits=28))
    sc.object("sga", "shmem", size)
    sc.step("spawn", pid="db{i}", repeat=procs)
    sc.step("mmap", pid="db{i}", vma="sga", object="sga", shared=True, addr=SGA_BASE, fixed=True, repeat=procs)
    sc.step("touch", pid="db0", vma="sga", access="write")
    sc.step("touch", pid="db{i}", vma="sga", repeat=procs)
    return sc


def sga_mshare(scale: float) -> Scenario:
    """:func:`sga` with the segment in an mshare region (512 GiB, mapped whole at one address):
    under every policy but ``mshare`` the object is shmem and the run is :func:`sga`'s."""
    size = _size(300 * GiB * scale, 2 << 20)
    procs = max(2, int(1500 * scale ** 0.5))
    sc = Scenario("sga-300g-mshare", f"a {int(size) >> 30} GiB segment placed in a 512 GiB mshare region, written "
                  f"once, {procs} processes (spawned, mapping the region at one address) each reading all of it",
                  Machine(aslr_bits=28))
    sc.object("sga", "mshare", size, region=512 * GiB)
    sc.step("spawn", pid="db{i}", repeat=procs)
    sc.step("mmap", pid="db{i}", vma="sga", object="sga", shared=True, addr=SGA_BASE, fixed=True, repeat=procs)
    sc.step("touch", pid="db0", vma="sga", access="write", length=size)
    sc.step("touch", pid="db{i}", vma="sga", length=size, repeat=procs)
    return sc


def hugetlb_1t(scale: float) -> Scenario:
    size = _size(TiB * scale, 2 << 20)
    procs = max(2, int(10_000 * scale ** 0.5))
    sc = Scenario("hugetlb-1t", f"a {int(size) >> 30} GiB hugetlb segment attached by {procs} processes "
                  "at one 1 GiB-aligned address, each reading all of it", Machine(aslr_bits=28))
    sc.object("seg", "hugetlb", size)
    sc.step("spawn", pid="p{i}", repeat=procs)
    sc.step("mmap", pid="p{i}", vma="seg", object="seg", shared=True, addr=SGA_BASE, fixed=True, repeat=procs)
    sc.step("touch", pid="p0", vma="seg", access="write")
    sc.step("touch", pid="p{i}", vma="seg", repeat=procs)
    return sc


def many_vmas(scale: float) -> Scenario:
    n = max(100, int(10_000 * scale))
    sc = Scenario("many-vmas-10k", f"a process maps {n:,} small shared mappings (as many VMAs) and writes "
                  "each, forks; the child makes each read-only, then unmaps each", Machine(aslr_bits=0))
    sc.step("spawn", pid="parent")
    sc.step("mmap", pid="parent", vma="m{i}", size="8192", shared=True, repeat=n)
    sc.step("touch", pid="parent", vma="m{i}", access="write", repeat=n)
    sc.step("fork", pid="parent", child="child")
    sc.step("mprotect", pid="child", vma="m{i}", prot="r", repeat=n)
    sc.step("munmap", pid="child", vma="m{i}", repeat=n)
    sc.step("exit", pid="child")
    return sc


CASES: dict[str, Case] = {c.name: c for c in [
    Case("fork-private-4g", "4 GiB private anon written, fork, child exits", ("eager", "lazy", "linux"),
         fork_private, target_s=1.0, host=True),
    Case("fork-shared-4g-read", "4 GiB shared anon written, fork, child reads all", ("eager", "lazy", "linux"),
         fork_shared_read, target_s=1.0, host=True),
    Case("many-vmas-10k", "10,000 small shared mappings, each written; fork; the child mprotects and unmaps each",
         ("linux",), many_vmas, host=True),
    Case("pgbench-like", "16 GiB shared buffers, 1,000 backends reading a zipf 10% sample",
         ("linux", "shared-pt", "eager"), pgbench(1000), target_s=20.0),
    Case("pgbench-like+translation", "pgbench-like with the translation model on (a step's first 2**20 accesses "
         f"and 1 in {XLAT_SAMPLE} of the rest simulated); its time against pgbench-like's is the bound (< 2x)",
         ("linux", "shared-pt"), pgbench(1000, translation=True)),
    Case("sga-300g", "300 GiB shmem, 1,500 processes attaching it at one address and reading all of it",
         ("linux", "shared-pt", "shared-pt-2005"), sga, target_s=10.0, target_gib=2.0),
    Case("sga-300g-mshare", "sga-300g with the segment in a 512 GiB mshare region", ("linux", "mshare"), sga_mshare,
         target_s=10.0, target_gib=2.0),
    Case("hugetlb-1t", "1 TiB hugetlb, 10,000 processes; with and without PMD sharing",
         ("linux", "linux-no-pmd-share"), hugetlb_1t, target_s=5.0, target_gib=4.0),
]}
CURVE = {f"pgbench-like@{n}": Case(f"pgbench-like@{n}", f"as pgbench-like with {n:,} backends", ("linux", "shared-pt"),
                                   pgbench(n), target_s=20.0 if n == 3000 else None)
         for n in (100, 300, 1000, 3000, 10_000)}
ALL = {**CASES, **CURVE}
