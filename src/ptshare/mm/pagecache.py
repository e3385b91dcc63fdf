"""Backing objects: shmem/tmpfs (SysV segments, ``/dev/shm`` files, shared anonymous memory),
regular files, hugetlbfs files, and mshare objects (shmem in an msharefs region).  Models ``struct
inode`` + ``struct address_space``: a page cache (file index -> frame, the xarray in ``i_pages``)
and ``i_mmap``, the VMAs mapping the object.

Anonymous private memory has no object: its pages belong to the VMA's ``anon_vma``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .frames import PG_CACHE, PG_HUGE

if TYPE_CHECKING:
    from .mm_struct import Task
    from .vma import VMA

SHMEM = "shmem"
FILE = "file"
HUGETLB = "hugetlb"
MSHARE = "mshare"
KINDS = (SHMEM, FILE, HUGETLB, MSHARE)
MSHARE_ALIGN = 512 << 30
"""``mshare_align`` of the mshare series (v3): ``P4D_SIZE``, the span of one PUD table on x86-64.  A
region's start and size are multiples of it."""


def file_stamp(object_id: int, index: np.ndarray) -> np.ndarray:
    """The contents a regular file has on disk at ``index``: distinct per file and page, never 0."""
    return -((np.int64(object_id) << 36) | index.astype(np.int64)) - 1


@dataclass(eq=False)
class AddressSpace:
    """One backing object.  ``page_size`` is 4 KiB, or 2 MiB for hugetlbfs."""

    id: int
    name: str
    kind: str
    size: int
    page_size: int
    anonymous: bool = False  # created by mmap(MAP_SHARED|MAP_ANONYMOUS); dies with its last mapping
    pages: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    i_mmap: set[VMA] = field(default_factory=set, repr=False)
    nr_cached: int = 0
    data_pages: int = -1  # pages that hold file data on disk; truncation cuts it, growth adds holes
    region: int = 0  # an mshare object's region: the msharefs file's size, a multiple of MSHARE_ALIGN
    host: Task | None = field(default=None, repr=False)  # an mshare region's host mm (mm/mshare.py)

    def __post_init__(self) -> None:
        if self.pages is None:
            self.pages = np.zeros(self.nr_pages, dtype=np.int64)
        if self.data_pages < 0:
            self.data_pages = self.nr_pages

    # --- what the kernel asks of a mapping ----------------------------------------------------

    @property
    def nr_pages(self) -> int:
        return -(-self.size // self.page_size)

    @property
    def is_hugetlb(self) -> bool:
        return self.kind == HUGETLB

    @property
    def is_shmem(self) -> bool:
        """shmem pages: a shmem object's, and an mshare region's, which holds one shared anonymous
        mapping (``MAP_SHARED | MAP_ANONYMOUS``, placed by ``MSHAREFS_CREATE_MAPPING``) covering it."""
        return self.kind in (SHMEM, MSHARE)

    @property
    def is_mshare(self) -> bool:
        """An mshare object: shmem placed at the start of an msharefs file of ``region`` bytes (by
        ``MSHAREFS_CREATE_MAPPING``), which is mapped whole, at a multiple of :data:`MSHARE_ALIGN`, never split or
        mprotected (``mshare_vm_op_split``/``mshare_vm_op_mprotect`` return ``-EINVAL``).  These are the
        file's own rules, so they hold under every policy; only the ``mshare`` policy shares its tables."""
        return self.kind == MSHARE

    @property
    def writenotify(self) -> bool:
        """Whether shared writable mappings are write-protected until first write (``page_mkwrite``).

        Disk filesystems track dirty pages this way (ext4, xfs); tmpfs and hugetlbfs do not.
        """
        return self.kind == FILE

    @property
    def page_flags(self) -> int:
        return PG_CACHE | (PG_HUGE if self.is_hugetlb else 0)

    def initial_stamps(self, index: np.ndarray) -> np.ndarray:
        """Contents of pages read in for the first time: file data (zeros in a hole past the data
        the file had before it was last truncated), or zeros for shmem and hugetlb."""
        if self.kind == FILE:
            return np.where(index < self.data_pages, file_stamp(self.id, index), 0)
        return np.zeros(len(index), dtype=np.int64)

    # --- the page cache ------------------------------------------------------------------------

    def find(self, index: np.ndarray) -> np.ndarray:
        """Frames cached at ``index`` (0 where absent or beyond the end of the file)."""
        inside = index < len(self.pages)
        out = np.zeros(len(index), dtype=np.int64)
        out[inside] = self.pages[index[inside]]
        return out

    def add(self, index: np.ndarray, pfns: np.ndarray) -> None:
        self.pages[index] = pfns
        self.nr_cached += len(index)

    def fully_cached(self, lo: int, hi: int) -> bool:
        """Whether every page of [lo, hi) (file page indices) is in the cache."""
        if hi > len(self.pages):
            return False
        if self.nr_cached == len(self.pages):
            return True
        return bool(np.all(self.pages[lo:hi] != 0))

    def resize(self, size: int) -> np.ndarray:
        """Set the file size; returns the frames dropped from the cache beyond the new end."""
        old = len(self.pages)
        self.size = size
        new = self.nr_pages
        self.data_pages = min(self.data_pages, new)
        if new >= old:
            grown = np.zeros(new, dtype=np.int64)
            grown[:old] = self.pages
            self.pages = grown
            return np.zeros(0, dtype=np.int64)
        dropped = self.pages[new:]
        dropped = dropped[dropped != 0]
        self.pages = self.pages[:new].copy()
        self.nr_cached -= len(dropped)
        return dropped

    def cached_frames(self) -> np.ndarray:
        return self.pages[self.pages != 0]
