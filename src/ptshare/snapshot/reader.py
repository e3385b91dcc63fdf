"""Reading one live process into a :class:`ProcessSnap`.

A running process changes while it is read, so the read is bracketed: ``stat`` and ``status``
before, ``smaps`` and ``pagemap``, then ``status`` and ``stat`` again.  A different start time or a
zombie means the process exited (or its pid was reused).
A VmPTE that moved means its page tables changed under the read, which is then retried.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from ..arch import PAGE_SHIFT
from ..errors import UsageError
from . import pagemap
from .model import ProcessSnap, VmaSnap
from .pageset import EMPTY, PageSet
from .procfs import MapsEntry, ProcessGone, Stat, read_cmdline, read_smaps, read_stat, read_status

ATTEMPTS = 3
USER_TOP = 1 << 57  # above every user address space ([vsyscall] lives there, in no user page table)


@dataclass
class ReadResult:
    process: ProcessSnap
    anon_pfns: np.ndarray  # frames of its anonymous pages (empty when frame numbers are hidden)
    warnings: list[str]


class Reader:
    """Reads processes with one pagemap method.  ``zero_pfn`` is 0 when frame numbers are hidden."""

    def __init__(self, method: str = "auto") -> None:
        self.zero_pfn = pagemap.own_zero_pfn()
        scan = pagemap.scan_supported()
        if method == "scan" and not scan:
            raise UsageError("this kernel has no PAGEMAP_SCAN ioctl (it arrived in Linux 6.7); use --method read")
        self.method = "scan" if method == "auto" and scan else method

    @property
    def pfns_visible(self) -> bool:
        return bool(self.zero_pfn)

    def read(self, pid: int) -> ReadResult:
        """Read process ``pid``, again while its VmPTE moves under the read.  Raises ProcessGone or NoAccess."""
        warnings: list[str] = []
        t0 = time.perf_counter()
        attempts = 0
        while True:
            attempts += 1
            before, vmpte0, got, pfns = self._read_once(pid)
            if vmpte0 == got.status["VmPTE"]:
                break
            if attempts == ATTEMPTS:
                warnings.append(f"process {pid} ({before.comm}): its page tables changed during each of "
                                f"{ATTEMPTS} reads (last: VmPTE {vmpte0} -> {got.status['VmPTE']} kB); "
                                "its figures are those of the last read")
                break
        got.read_ms = (time.perf_counter() - t0) * 1000
        got.attempts = attempts
        return ReadResult(got, pfns, warnings)

    def _read_once(self, pid: int) -> tuple[Stat, int, ProcessSnap, np.ndarray]:
        """One bracketed read: stat and VmPTE before it, the process, the frames of its anonymous pages."""
        before = read_stat(pid)
        if before.state in "ZX":
            raise ProcessGone(pid, "has exited (a zombie)")
        vmpte0 = read_status(pid).get("VmPTE")
        if vmpte0 is None:
            raise ProcessGone(pid, "has no user address space (a kernel thread, or it is exiting)")
        cmdline = read_cmdline(pid)
        entries = [e for e in read_smaps(pid) if e.end <= USER_TOP]
        vmas, pfns = self._read_pages(pid, entries)
        status = read_status(pid)
        _same_process(pid, before, read_stat(pid))
        if "VmPTE" not in status:
            raise ProcessGone(pid)
        proc = ProcessSnap(pid=pid, ppid=before.ppid, comm=before.comm, cmdline=cmdline,
                           starttime=before.starttime, status=status, vmas=vmas)
        return before, vmpte0, proc, pfns

    def _read_pages(self, pid: int, entries: list[MapsEntry]) -> tuple[list[VmaSnap], np.ndarray]:
        fd = pagemap.open_pagemap(pid)
        try:
            regions = self._regions(fd, pid, entries)
            vmas = [vma_snap(e, regions.clip(e.start, e.end)) for e in entries]
            pfns = self._anon_pfns(fd, pid, vmas) if self.pfns_visible else np.zeros(0, dtype=np.uint64)
        finally:
            os.close(fd)
        return vmas, pfns

    def _regions(self, fd: int, pid: int, entries: list[MapsEntry]) -> pagemap.Regions:
        if not entries:
            return pagemap.Regions.concat([])
        if self.method == "scan":
            return pagemap.scan(fd, pid, entries[0].start, entries[-1].end)
        parts = []
        for e in entries:
            parts.append(pagemap.entry_regions(pagemap.read_entries(fd, pid, e.start, e.end), e.start,
                                               self.zero_pfn))
        return pagemap.Regions.concat(parts)

    def _anon_pfns(self, fd: int, pid: int, vmas: list[VmaSnap]) -> np.ndarray:
        """Frames of the anonymous pages of private mappings (to find those shared with another process)."""
        out = []
        for v in vmas:
            if v.shared or v.written.encoding == EMPTY:
                continue
            for lo, mask in v.written.chunks(1 << 18):
                base = v.start + (lo << PAGE_SHIFT)
                entries = pagemap.read_entries(fd, pid, base, base + (len(mask) << PAGE_SHIFT))
                out.append(pagemap.pfns(entries[mask]))
        return np.unique(np.concatenate(out)) if out else np.zeros(0, dtype=np.uint64)


def _same_process(pid: int, before: Stat, after: Stat) -> None:
    if after.starttime != before.starttime:
        raise ProcessGone(pid, "exited while being read (its pid now belongs to another process)")
    if after.state in "ZX":
        raise ProcessGone(pid)


def vma_snap(e: MapsEntry, regions: pagemap.Regions) -> VmaSnap:
    """The VMA ``e`` with its page-table entries from ``regions`` (already clipped to it)."""
    npages = (e.end - e.start) >> PAGE_SHIFT
    first = ((regions.start - np.uint64(e.start)) >> np.uint64(PAGE_SHIFT)).astype(np.uint64)
    length = ((regions.end - regions.start) >> np.uint64(PAGE_SHIFT)).astype(np.uint64)
    cats = regions.cats
    anon = (cats & np.uint64(pagemap.FILE | pagemap.ZERO)) == 0

    def pages(flag: int) -> int:
        return int(length[(cats & np.uint64(flag)) != 0].sum())

    hugetlb = "ht" in e.vmflags
    huge = (cats & np.uint64(pagemap.HUGE)) != 0

    return VmaSnap(
        start=e.start, end=e.end, perms=e.perms, offset=e.offset, dev=e.dev, inode=e.inode, path=e.path,
        vmflags=" ".join(sorted(e.vmflags)), kernel_page_kb=e.fields.get("KernelPageSize", 4),
        rss_kb=e.fields.get("Rss", 0), swap_kb=e.fields.get("Swap", 0), anon_kb=e.fields.get("Anonymous", 0),
        mapped=PageSet.from_runs(npages, first, length),
        written=PageSet.from_runs(npages, first[anon], length[anon]),
        zero_pages=pages(pagemap.ZERO), huge_pages=pages(pagemap.HUGE), swapped_pages=pages(pagemap.SWAPPED),
        kind="hugetlb" if hugetlb else "anon",
        thp=None if hugetlb or not huge.any() else PageSet.from_runs(npages, first[huge], length[huge]),
    )
