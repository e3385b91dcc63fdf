"""What a snapshot holds: processes, their VMAs and present pages, and the objects they share."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..arch import PAGE_SHIFT
from .pageset import PageSet

SCHEMA = "ptshare.snapshot/1"

# Kinds of backing of a VMA, beyond the simulator's object kinds (shmem, file, hugetlb).
ANON = "anon"  # private anonymous memory: heap, stacks, malloc arenas
SPECIAL = "special"  # [vdso], [vvar], device and PFN mappings: no object the simulator can share


@dataclass
class VmaSnap:
    """One VMA of one process, and which of its pages have page-table entries.

    ``mapped`` holds every page with an entry (present, or swapped out); ``written`` the subset
    that maps anonymous memory (private pages, copies made on write), which only a write fault
    reproduces.  The rest map page-cache pages or the zero page, which a read reproduces.  ``thp``
    holds the pages of the mapped ones that a huge PMD maps (outside hugetlb): a transparent huge
    page where they are written, the huge zero page where not.
    """

    start: int
    end: int
    perms: str  # as maps shows them: "rw-p", "r--s"
    offset: int  # bytes into the object
    dev: str
    inode: int
    path: str
    vmflags: str  # smaps VmFlags, space-separated two-letter codes
    kernel_page_kb: int
    rss_kb: int
    swap_kb: int
    anon_kb: int
    mapped: PageSet
    written: PageSet
    zero_pages: int = 0  # entries mapping the zero page
    huge_pages: int = 0  # pages mapped by a huge PMD (THP or hugetlb)
    swapped_pages: int = 0
    object: int = -1  # index into Snapshot.objects; -1 for private anonymous and special memory
    kind: str = ANON  # ANON, SPECIAL, or the object's kind
    thp: PageSet | None = None  # pages mapped by huge PMDs outside hugetlb (THP, the huge zero page)

    @property
    def npages(self) -> int:
        return (self.end - self.start) >> PAGE_SHIFT

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"

    @property
    def flags(self) -> set[str]:
        return set(self.vmflags.split())


@dataclass
class ProcessSnap:
    """One process: who it is, what the kernel reported, and its VMAs."""

    pid: int
    ppid: int
    comm: str
    cmdline: list[str]
    starttime: int
    status: dict[str, int]  # /proc/PID/status kB lines: VmPTE, VmRSS, RssAnon...
    vmas: list[VmaSnap] = field(default_factory=list)
    read_ms: float = 0.0
    attempts: int = 1
    anon_shared_kb: int | None = None  # anonymous pages whose frames another snapshotted process maps

    @property
    def vmpte_kb(self) -> int:
        return self.status.get("VmPTE", 0)

    @property
    def command(self) -> str:
        return " ".join(self.cmdline) or f"[{self.comm}]"


@dataclass
class ObjectSnap:
    """A backing object mapped by one or more VMAs: a file, shmem segment or hugetlbfs file."""

    dev: str
    inode: int
    path: str
    kind: str  # shmem | file | hugetlb
    size: int  # bytes: the furthest offset any snapshotted VMA maps


@dataclass
class Snapshot:
    """A set of processes read at one moment.  ``partial`` when some of what was asked is missing."""

    meta: dict
    processes: list[ProcessSnap]
    objects: list[ObjectSnap]

    @property
    def partial(self) -> bool:
        return bool(self.meta.get("problems"))

    @property
    def problems(self) -> list[str]:
        return list(self.meta.get("problems", []))

    @property
    def warnings(self) -> list[str]:
        return list(self.meta.get("warnings", []))
