"""Which virtual pages of a process have page-table entries: ``/proc/PID/pagemap``.

Two ways to read it, both in bulk into numpy arrays, both over the mapped ranges only:

* the ``PAGEMAP_SCAN`` ioctl (Linux 6.7+): the kernel returns runs of pages with the same
  categories (present, swapped, file-backed, zero page, mapped by a huge PMD), so a fully
  touched 64 GiB segment is one record, not 16 million;
* reading the 8-byte entries (any kernel): present, swapped and file bits per page, and the frame
  number when the reader may see it (``CAP_SYS_ADMIN``), from which the zero page is recognised.

Both give :class:`Regions`: sorted runs ``[start, end)`` of addresses with a category mask.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

from ..arch import PAGE_SHIFT, PAGE_SIZE
from .procfs import PROC, NoAccess, ProcessGone

# Our categories (a snapshot stores these).
PRESENT = 1  # a present PTE (or huge PMD)
SWAPPED = 2  # a swap or migration entry: the table holds it as surely as a present page
FILE = 4  # maps a page-cache page (file, shmem, hugetlb), not an anonymous one
ZERO = 8  # maps the shared zero page
HUGE = 16  # mapped by a PMD (transparent huge page or hugetlb), so no PTE table under it
MAPPED = PRESENT | SWAPPED

# include/uapi/linux/fs.h
PAGEMAP_SCAN = 0xC0606610  # _IOWR('f', 16, struct pm_scan_arg)
_PAGE_IS_FILE, _PAGE_IS_PRESENT, _PAGE_IS_SWAPPED, _PAGE_IS_PFNZERO, _PAGE_IS_HUGE = 4, 8, 16, 32, 64
_SCAN_ARG = struct.Struct("12Q")
_VEC_LEN = 1 << 16  # page_region records per ioctl (1.5 MiB)

# Documentation/admin-guide/mm/pagemap.rst
_PM_PRESENT = np.uint64(1 << 63)
_PM_SWAP = np.uint64(1 << 62)
_PM_FILE = np.uint64(1 << 61)
_PM_PFN = np.uint64((1 << 55) - 1)
_READ_PAGES = 1 << 20  # entries per read (8 MiB)


@dataclass
class Regions:
    """Runs of pages with page-table entries: ``start``/``end`` addresses and ``cats`` masks."""

    start: np.ndarray
    end: np.ndarray
    cats: np.ndarray

    @classmethod
    def concat(cls, parts: list[Regions]) -> Regions:
        if not parts:
            return cls(*(np.zeros(0, dtype=np.uint64) for _ in range(3)))
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("start", "end", "cats")))

    def clip(self, lo: int, hi: int) -> Regions:
        """The runs inside ``[lo, hi)``, cut at its bounds."""
        i = int(np.searchsorted(self.end, lo, side="right"))
        j = int(np.searchsorted(self.start, hi, side="left"))
        start = np.maximum(self.start[i:j], np.uint64(lo))
        end = np.minimum(self.end[i:j], np.uint64(hi))
        return Regions(start, end, self.cats[i:j])


def _scan_category(kernel_cats: np.ndarray) -> np.ndarray:
    out = np.zeros(len(kernel_cats), dtype=np.uint64)
    for theirs, ours in ((_PAGE_IS_PRESENT, PRESENT), (_PAGE_IS_SWAPPED, SWAPPED), (_PAGE_IS_FILE, FILE),
                         (_PAGE_IS_PFNZERO, ZERO), (_PAGE_IS_HUGE, HUGE)):
        out |= np.where(kernel_cats & np.uint64(theirs), np.uint64(ours), np.uint64(0))
    return out


def open_pagemap(pid: int) -> int:
    try:
        return os.open(f"{PROC}/{pid}/pagemap", os.O_RDONLY)
    except PermissionError:
        raise NoAccess(pid, "pagemap") from None
    except OSError:  # ENOENT: reaped; ESRCH: a zombie, its mm already gone
        raise ProcessGone(pid) from None


def scan(fd: int, pid: int, lo: int, hi: int) -> Regions:
    """PAGEMAP_SCAN over ``[lo, hi)``: the runs of pages that are present or swapped.

    A call returns at most ``_VEC_LEN`` runs; only a full vector means there is more, and the next
    call starts where its last run ends.  (The ``walk_end`` the kernel reports is not used: after a
    walk that restarted internally it can lie below runs already returned.)
    """
    vec = np.zeros((_VEC_LEN, 3), dtype=np.uint64)
    parts = []
    start = lo
    want = _PAGE_IS_PRESENT | _PAGE_IS_SWAPPED
    report = want | _PAGE_IS_FILE | _PAGE_IS_PFNZERO | _PAGE_IS_HUGE
    while start < hi:
        arg = bytearray(_SCAN_ARG.pack(_SCAN_ARG.size, 0, start, hi, 0, vec.ctypes.data, _VEC_LEN, 0, 0, 0,
                                       want, report))
        try:
            n = fcntl.ioctl(fd, PAGEMAP_SCAN, arg, True)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES):
                raise NoAccess(pid, "pagemap") from None
            raise ProcessGone(pid, f"could not be read (pagemap: {exc.strerror})") from None
        rows = vec[:n]
        parts.append(Regions(rows[:, 0].copy(), rows[:, 1].copy(), _scan_category(rows[:, 2])))
        if n < _VEC_LEN:
            break
        start = int(rows[-1, 1])
    return Regions.concat(parts)


def read_entries(fd: int, pid: int, lo: int, hi: int) -> np.ndarray:
    """The raw 8-byte pagemap entries of the pages of ``[lo, hi)``."""
    npages = (hi - lo) >> PAGE_SHIFT
    out = np.zeros(npages, dtype=np.uint64)
    view = memoryview(out).cast("B")
    done = 0
    while done < npages:
        count = min(_READ_PAGES, npages - done)
        try:
            got = os.preadv(fd, [view[done * 8:(done + count) * 8]], ((lo >> PAGE_SHIFT) + done) * 8)
        except PermissionError:
            raise NoAccess(pid, "pagemap") from None
        except OSError as exc:
            raise ProcessGone(pid, f"could not be read (pagemap: {exc.strerror})") from None
        if got <= 0:
            raise ProcessGone(pid)
        done += got // 8
    return out


def entry_regions(entries: np.ndarray, lo: int, zero_pfn: int) -> Regions:
    """Runs of equal categories among raw entries starting at address ``lo``."""
    cats = np.where(entries & _PM_PRESENT, np.uint64(PRESENT), np.uint64(0))
    cats |= np.where(entries & _PM_SWAP, np.uint64(SWAPPED), np.uint64(0))
    cats |= np.where(entries & _PM_FILE, np.uint64(FILE), np.uint64(0))
    if zero_pfn:
        is_zero = (entries & _PM_PRESENT).astype(bool) & ((entries & _PM_PFN) == np.uint64(zero_pfn))
        cats |= np.where(is_zero, np.uint64(ZERO), np.uint64(0))
    change = np.flatnonzero(np.diff(cats)) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [len(cats)]))
    keep = cats[starts] != 0
    base = np.uint64(lo)
    return Regions(base + starts[keep].astype(np.uint64) * np.uint64(PAGE_SIZE),
                   base + ends[keep].astype(np.uint64) * np.uint64(PAGE_SIZE), cats[starts[keep]])


def pfns(entries: np.ndarray) -> np.ndarray:
    """Frame numbers of the present entries (all 0 when this user may not see them)."""
    present = (entries & _PM_PRESENT).astype(bool)
    return (entries[present] & _PM_PFN).astype(np.uint64)


def _own_page(action):
    """Run ``action(fd, addr)`` on an anonymous page of our own that has been read (the zero page)."""
    area = mmap.mmap(-1, PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        _ = area[0]
        addr = ctypes.addressof(ctypes.c_char.from_buffer(area))
        fd = os.open(f"{PROC}/self/pagemap", os.O_RDONLY)
        try:
            return action(fd, addr)
        finally:
            os.close(fd)
    finally:
        area.close()


def own_zero_pfn() -> int:
    """The zero page's frame number; 0 when frame numbers are hidden from this user."""
    entry = _own_page(lambda fd, addr: read_entries(fd, os.getpid(), addr, addr + PAGE_SIZE))
    return int(entry[0] & _PM_PFN) if entry[0] & _PM_PRESENT else 0


def scan_supported() -> bool:
    """Whether this kernel has the PAGEMAP_SCAN ioctl (Linux 6.7+)."""
    def probe(fd: int, addr: int) -> bool:
        arg = bytearray(_SCAN_ARG.pack(_SCAN_ARG.size, 0, addr, addr + PAGE_SIZE, 0, 0, 0, 0, 0, 0, 0, 0))
        try:
            fcntl.ioctl(fd, PAGEMAP_SCAN, arg, True)
        except OSError:
            return False
        return True

    return _own_page(probe)
