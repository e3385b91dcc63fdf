"""The experiments: families of small host scenarios, each varying one size at a time so that
the costs of events that usually come together can be told apart.

Every family is an ordinary scenario (the same one runs on the host backend and on the simulator)
plus the list of its steps that are *samples*: the steps whose measured time is explained by the
simulator's event counts for that step.  What each family separates:

``anon``
    Private anonymous memory of 16..512 MiB, every page written: write faults; the same pages
    written again (the cost of an access that does not fault); a fork (timed by the probe
    instead, see :mod:`.probes`); the child's writes (copy-on-write copies) and exit (pages
    freed); the parent's writes after that (exclusive pages reused); a second fork and exit (PTEs
    zapped, nothing freed); munmap (zapped and freed).
``sparse``
    One page written per 2 MiB over 256 MiB..4 GiB of address space: the child's exit frees as
    many PTE tables as it zaps PTEs, so the cost of freeing a page-table page comes apart from
    the cost of a PTE.  The same
    read instead of written maps the zero page (no ``anon_vma``: fork skips it).
``zero``
    Every page read from untouched anonymous memory: zero-page faults; munmap zaps without
    freeing.
``vmas``
    0..1024 small VMAs (one page each, a page apart so they do not merge): the cost per VMA
    torn down, and the fixed cost of munmap (one call per VMA).
``fault-around``
    A shmem object of which every k-th page is in the page cache (k = 1, 2, 4, 8, 16, none),
    read through fresh shared mappings.  Read one page per 64 KiB window, each fault maps the
    window's 16/k cached pages (fault-around maps 1..16) and nothing else happens: the cost of a
    read fault and of each extra PTE come apart.  Read page by page, each page not cached is a
    fault that allocates one (a page-cache allocation), and each page fault-around mapped is read
    right after it was mapped -- which on the project's machines costs more than the mapping
    itself (see :mod:`.fit`).  The writes that fill the cache are ``do_shared_fault`` with and
    without allocation.
``cow``
    Private mappings of a cached shmem object: a first write (``do_cow_fault``: copy the
    page-cache page), a read then a write (``do_wp_page`` copying a file page).
``file``
    A shared ext4 file read, then written: ``page_mkwrite`` faults (``do_wp_page`` on a shared
    mapping).  Only the write is a sample: the reads fill the page cache from the filesystem,
    which the model's events do not price apart from shmem.
``mprotect``, ``mremap``
    Written anonymous memory made read-only and writable again; moved by mremap to an address
    aligned differently, so that the kernel moves it entry by entry as the simulator does.
``hugetlb`` (root only)
    A hugetlb object written (a 2 MiB page allocated and cleared per fault) and read by a child
    (no allocation); a private hugetlb mapping written and forked (PMD entries copied).

Sample steps are grouped by *op*: the operation whose measured time they are (``fork``,
``touch``, ``exit``, ``munmap``, ``mprotect``, ``mremap``).  Beside the event counts each sample
carries pseudo-events that are not in the cost model but are in the measurement: the number of
calls (each op's fixed cost) and, for touches, whether the touch reads every page
of its range (then it reads each page fault-around maps as soon as it is mapped).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..arch import PAGE_SIZE
from ..host.worker import WINDOW
from ..scenario.model import Scenario

MIB = 1 << 20
HPAGE = 2 * MIB
GIB = 1 << 30
SPAN = 2 * MIB  # the address range one PTE table maps
FAULT_AROUND = 64 << 10  # fault_around_bytes (mm/memory.c), Linux's default
MREMAP_TARGET = WINDOW[0] + (1 << 40)  # inside the host backend's window, far below where mmap places


@dataclass(frozen=True)
class Sample:
    """Step ``step`` of a family's scenario is one measurement of op ``op``."""

    step: int
    op: str
    pseudo: dict[str, int] = field(default_factory=dict)  # calls: see the module docstring
    every_page: bool = False  # a touch that reads every page of its range, in order


@dataclass
class Family:
    name: str
    scenario: Scenario
    samples: list[Sample] = field(default_factory=list)
    optional: bool = False  # a host that cannot run it (no huge pages to be had) skips it, and says so


def call(op: str) -> str:
    """The pseudo-event counting calls of ``op``: its fixed cost, the intercept of its fit."""
    return f"{op} call"


class _Builder:
    """A family's scenario, step by step; each ``sample=True`` step is recorded as a sample."""

    def __init__(self, name: str, description: str) -> None:
        self.family = Family(name, Scenario(f"calibrate-{name}", description))
        self.sc = self.family.scenario

    def _add(self, op: str, sample: str | None, pseudo: dict[str, int] | None = None, every_page: bool = False,
             **fields) -> None:
        self.sc.step(op, **fields)
        if sample is not None:
            self.family.samples.append(Sample(len(self.sc.steps) - 1, sample, pseudo or {}, every_page))

    def spawn(self, pid: str) -> None:
        self._add("spawn", None, pid=pid)

    def mmap(self, pid: str, vma: str, size: int | None = None, repeat: int = 1, **fields) -> None:
        if size is not None:
            fields["size"] = size
        self._add("mmap", None, pid=pid, vma=vma, repeat=repeat, **fields)

    def written(self, pid: str, vma: str, size: int) -> None:
        """Anonymous memory mapped and written, not a sample: what the sample steps then act on."""
        self.mmap(pid, vma, size)
        self.touch(pid, vma, size, write=True, sample=False)

    def touch(self, pid: str, vma: str, length: int, *, write: bool, stride: int = PAGE_SIZE, repeat: int = 1,
              sample: bool = True) -> None:
        self._add("touch", "touch" if sample else None, {call("touch"): repeat},
                  every_page=stride == PAGE_SIZE, pid=pid, vma=vma, access="write" if write else "read",
                  length=length, stride=stride, repeat=repeat)

    def fork(self, pid: str, child: str, sample: bool = False) -> None:
        """A fork; a sample only where the probe cannot make it (see :mod:`.probes`): then its
        fixed cost, the pseudo-event, is the worker's (its interpreter's VMAs and PTEs) beyond the
        kernel's ``fork``."""
        self._add("fork", "fork" if sample else None, {call("fork"): 1}, pid=pid, child=child)

    def exit(self, pid: str, sample: bool = True) -> None:
        self._add("exit", "exit" if sample else None, {call("exit"): 1}, pid=pid)

    def munmap(self, pid: str, vma: str, repeat: int = 1, sample: bool = True) -> None:
        self._add("munmap", "munmap" if sample else None, {}, pid=pid, vma=vma, repeat=repeat)

    def mprotect(self, pid: str, vma: str, prot: str, length: int | None = None) -> None:
        self._add("mprotect", "mprotect", {}, pid=pid, vma=vma, prot=prot,
                  **({} if length is None else {"length": length}))

    def mremap(self, pid: str, vma: str, size: int, addr: int) -> None:
        self._add("mremap", "mremap", {}, pid=pid, vma=vma, size=size, addr=addr)

    def madvise(self, pid: str, vma: str, advice: str, length: int | None = None) -> None:
        self._add("madvise", "madvise", {}, pid=pid, vma=vma, advice=advice,
                  **({} if length is None else {"length": length}))


def anon(sizes: list[int]) -> Family:
    b = _Builder("anon", "private anonymous memory written, forked, copied on write, torn down")
    b.spawn("p")
    for n in sizes:
        a, c, d = f"a{n}", f"c{n}", f"d{n}"
        b.mmap("p", a, n * MIB)
        b.touch("p", a, n * MIB, write=True)  # do_anonymous_page
        b.touch("p", a, n * MIB, write=True)  # no fault: the cost of an access
        b.fork("p", c)  # copy_pte_range: PTEs and PTE tables
        b.touch(c, a, n * MIB, write=True)  # do_wp_page: copies
        b.exit(c)  # zap, the copies freed
        b.touch("p", a, n * MIB, write=True)  # do_wp_page: exclusive again, reused
        b.fork("p", d)
        b.exit(d)  # zap, nothing freed
        b.munmap("p", a)  # zap and free
    return b.family


def sparse(sizes: list[int]) -> Family:
    b = _Builder("sparse", "one page per 2 MiB: page-table pages as many as PTEs")
    b.spawn("p")
    for n in sizes:
        s, z, c = f"s{n}", f"z{n}", f"c{n}"
        b.mmap("p", s, n * MIB, align="2MiB")
        b.touch("p", s, n * MIB, write=True, stride=SPAN)
        b.fork("p", c)
        b.exit(c)
        b.munmap("p", s)
        b.mmap("p", z, n * MIB, align="2MiB")
        b.touch("p", z, n * MIB, write=False, stride=SPAN)  # zero page, and a table per fault
        b.munmap("p", z)
    return b.family


def zero(sizes: list[int]) -> Family:
    b = _Builder("zero", "untouched anonymous memory read: the zero page")
    b.spawn("p")
    for n in sizes:
        z = f"z{n}"
        b.mmap("p", z, n * MIB)
        b.touch("p", z, n * MIB, write=False)
        b.munmap("p", z)
    return b.family


def vmas(counts: list[int]) -> Family:
    """VMAs of one page, 8 KiB-aligned: each leaves a page free below the last, so none merge."""
    b = _Builder("vmas", "many small VMAs: fork's cost per VMA, and the fixed costs of fork and munmap")
    b.spawn("p")
    for k in counts:
        c = f"c{k}"
        if k:
            b.mmap("p", f"v{k}-{{i}}", PAGE_SIZE, repeat=k, align="8KiB")
            b.touch("p", f"v{k}-{{i}}", PAGE_SIZE, write=True, repeat=k)
        b.fork("p", c)
        b.exit(c)
        if k:
            b.munmap("p", f"v{k}-{{i}}", repeat=k)
    return b.family


def fault_around(size: int, every: list[int | None]) -> Family:
    """For each k in ``every`` (None: nothing cached), a fresh shmem object with every k-th page
    written, then read through new mappings: first one page per 64 KiB fault-around window (the
    window's first page, which is cached: one fault maps the window's 16/k cached pages and nothing
    else is read), then every page (the pages not cached fault one by one, and allocate)."""
    b = _Builder("fault-around", "a shmem object partly in the page cache, read: fault-around maps 1..16 pages")
    for k in every:
        b.sc.object(f"o{k or 0}", "shmem", size * MIB)
    b.spawn("p")
    for k in every:
        obj, w, s, r = f"o{k or 0}", f"w{k or 0}", f"s{k or 0}", f"r{k or 0}"
        if k:
            b.mmap("p", w, object=obj, shared=True)
            b.touch("p", w, size * MIB, write=True, stride=k * PAGE_SIZE)  # do_shared_fault, allocating
            b.munmap("p", w)  # zap, nothing freed (the page cache keeps the pages)
            b.mmap("p", s, object=obj, shared=True, prot="r")
            b.touch("p", s, size * MIB, write=False, stride=FAULT_AROUND)  # do_read_fault, do_fault_around
            b.munmap("p", s)
        b.mmap("p", r, object=obj, shared=True, prot="r")
        b.touch("p", r, size * MIB, write=False)  # the same, and every page read right after it is mapped
        b.munmap("p", r)
    full = f"o{every[0] or 0}"
    if every[0] == 1:  # a fully cached object written through a new mapping: do_shared_fault, no allocation
        b.mmap("p", "x", object=full, shared=True)
        b.touch("p", "x", size * MIB, write=True)
        b.munmap("p", "x")
    return b.family


def cow(sizes: list[int]) -> Family:
    b = _Builder("cow", "private mappings of a cached shmem object: do_cow_fault, do_wp_page on file pages")
    for n in sizes:
        b.sc.object(f"o{n}", "shmem", n * MIB)
    b.spawn("p")
    for n in sizes:
        obj = f"o{n}"
        b.mmap("p", f"s{n}", object=obj, shared=True)
        b.touch("p", f"s{n}", n * MIB, write=True, sample=False)  # fills the cache (fault-around family's job)
        b.munmap("p", f"s{n}", sample=False)
        b.mmap("p", f"q{n}", object=obj)
        b.touch("p", f"q{n}", n * MIB, write=True)  # do_cow_fault
        b.munmap("p", f"q{n}")  # zap, the copies freed
        b.mmap("p", f"r{n}", object=obj)
        b.touch("p", f"r{n}", n * MIB, write=False)  # do_read_fault, read-only PTEs
        b.touch("p", f"r{n}", n * MIB, write=True)  # do_wp_page: copies of file pages
        b.munmap("p", f"r{n}")
    return b.family


def file(sizes: list[int]) -> Family:
    b = _Builder("file", "a shared ext4 file read, then written: page_mkwrite")
    for n in sizes:
        b.sc.object(f"f{n}", "file", n * MIB)
    b.spawn("p")
    for n in sizes:
        m = f"m{n}"
        b.mmap("p", m, object=f"f{n}", shared=True)
        b.touch("p", m, n * MIB, write=False, sample=False)
        b.touch("p", m, n * MIB, write=True)  # do_wp_page -> wp_page_shared -> page_mkwrite
        b.munmap("p", m, sample=False)  # zapping marks the pages dirty: ext4's business, not the model's
    return b.family


def mprotect(sizes: list[int]) -> Family:
    """Written anonymous memory made read-only and writable again, whole (its PTEs) and, untouched,
    whole and half (no PTE: mprotect's fixed cost, with and without splitting the VMA)."""
    b = _Builder("mprotect", "written anonymous memory made read-only and writable again; untouched memory too")
    b.spawn("p")
    for n in sizes:
        a = f"a{n}"
        b.written("p", a, n * MIB)
        b.mprotect("p", a, "r")
        b.mprotect("p", a, "rw")
        b.munmap("p", a, sample=False)
    b.mmap("p", "u", sizes[0] * MIB)
    for length in (None, sizes[0] * MIB // 2):
        b.mprotect("p", "u", "r", length=length)
        b.mprotect("p", "u", "rw", length=length)
    b.munmap("p", "u", sample=False)
    return b.family


def mremap(sizes: list[int]) -> Family:
    """Each mapping is moved to a fixed address one page past a 2 MiB boundary: with source and
    destination aligned differently, move_page_tables() must move entry by entry (move_ptes),
    which is what the simulator counts; between equally aligned addresses the kernel moves whole
    PTE tables by their PMD entry (move_normal_pmd), which the simulator does not model."""
    b = _Builder("mremap", "written anonymous memory moved by mremap, PTE by PTE")
    b.spawn("p")
    for i, n in enumerate(sizes):
        a = f"a{n}"
        b.written("p", a, n * MIB)
        b.mremap("p", a, n * MIB, addr=MREMAP_TARGET + i * GIB + PAGE_SIZE)
        b.munmap("p", a, sample=False)
    return b.family


def madvise(sizes: list[int]) -> Family:
    """MADV_DONTNEED of written anonymous memory (its zap), and hints that change no entry
    (MADV_HUGEPAGE and MADV_NOHUGEPAGE over the first half, which split the VMA and merge it back):
    madvise's fixed cost."""
    b = _Builder("madvise", "written anonymous memory dropped by MADV_DONTNEED; THP hints")
    b.spawn("p")
    for n in sizes:
        a = f"a{n}"
        b.written("p", a, n * MIB)
        b.madvise("p", a, "hugepage", length=n * MIB // 2)
        b.madvise("p", a, "nohugepage", length=n * MIB // 2)
        b.madvise("p", a, "dontneed")
        b.munmap("p", a, sample=False)
    return b.family


def hugetlb(sizes: list[int]) -> Family:
    """Huge pages come from the pool reserved for the run, and a pool page fresh from the buddy
    allocator may be one the hypervisor took back (clearing it would then cost milliseconds, see
    :mod:`.guest`), which pre-touching 4 KiB pages does not reliably prevent.  So the family first
    writes an object as large as all it will allocate and truncates it: those pages go back to the
    pool's free list (``enqueue_hugetlb_folio``), which hands out the most recently freed first."""
    b = _Builder("hugetlb", "hugetlb pages allocated, mapped without allocating, and copied at fork")
    b.family.optional = True
    warm = 2 * sum(sizes) * MIB + HPAGE  # truncated to its first page: a scenario's sizes are never 0
    b.sc.object("warm", "hugetlb", warm)
    for n in sizes:
        b.sc.object(f"h{n}", "hugetlb", n * MIB)
        b.sc.object(f"p{n}", "hugetlb", n * MIB)
    b.spawn("p")
    b.mmap("p", "warm", object="warm", shared=True)
    b.touch("p", "warm", warm, write=True, stride=HPAGE, sample=False)
    b.munmap("p", "warm", sample=False)
    b.sc.step("truncate", object="warm", size=HPAGE)
    for n in sizes:
        h, q, c, d = f"h{n}", f"q{n}", f"c{n}", f"d{n}"
        b.mmap("p", h, object=h, shared=True)
        b.touch("p", h, n * MIB, write=True, stride=HPAGE)  # hugetlb_no_page: allocate and clear
        b.fork("p", c, sample=True)  # a shared hugetlb VMA: not copied
        b.touch(c, h, n * MIB, write=False, stride=HPAGE)  # the page is in the file: no allocation
        b.exit(c, sample=False)
        b.munmap("p", h, sample=False)
        b.mmap("p", q, object=f"p{n}")
        b.touch("p", q, n * MIB, write=True, stride=HPAGE)  # a private huge page
        b.fork("p", d, sample=True)  # copy_hugetlb_page_range
        b.exit(d, sample=False)
        b.munmap("p", q, sample=False)
    return b.family


def plan(quick: bool, hugetlb_ok: bool) -> list[Family]:
    """The families of a full calibration (a few minutes), or of ``--quick`` (well under a minute,
    smaller sizes, fewer points: coarser, but every event the full run identifies)."""
    if quick:
        fams = [anon([8, 32, 64]), sparse([256, 1024]), zero([16, 64]), vmas([0, 64, 256]),
                fault_around(16, [1, 2, 4, 16, None]), cow([16, 32]), file([16]), mprotect([16, 64]),
                mremap([16, 32, 64]), madvise([16, 64])]
    else:
        fams = [anon([16, 32, 64, 128, 256, 512]), sparse([256, 512, 1024, 2048, 4096]), zero([16, 64, 256]),
                vmas([0, 16, 64, 256, 1024]), fault_around(64, [1, 2, 4, 8, 16, None]), cow([16, 64, 128]),
                file([16, 64]), mprotect([16, 64, 256]), mremap([16, 64, 256]), madvise([16, 64, 256])]
        if hugetlb_ok:
            fams.append(hugetlb([32, 64, 128]))
    return fams
