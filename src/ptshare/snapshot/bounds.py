"""How far the kernel's VmPTE may lie from what the snapshot's present pages account for.

The simulator builds a page table where a page is present.  The kernel may also hold tables with
no present page: a table stays allocated after ``munmap`` of part of its span or
``madvise(MADV_DONTNEED)``, and after its pages were reclaimed; ``pagemap`` cannot show such a
table.  It never holds a table whose span meets no VMA (``free_pgtables`` frees those), so the
most VmPTE can be is one PTE table per 2 MiB span, one PMD table per 1 GiB span and one PUD
table per 512 GiB span that some VMA touches (hugetlb VMAs need no PTE tables).

In the other direction, a shmem or file page mapped by a huge PMD needs no PTE table on x86-64,
but the simulator maps those pages with PTEs; such spans can make the simulated VmPTE higher.
(Anonymous transparent huge pages do not: x86-64 deposits a PTE table for each and counts it.)
"""

from __future__ import annotations

import numpy as np

from ..arch import TABLE_BYTES
from .model import ANON, SPECIAL, ProcessSnap

PTE_SHIFT, PMD_SHIFT, PUD_SHIFT = 21, 30, 39


def spans_covered(starts: np.ndarray, ends: np.ndarray, shift: int) -> int:
    """How many 2**shift-aligned spans the sorted, disjoint ranges [start, end) touch."""
    if not len(starts):
        return 0
    first = starts >> shift
    last = (ends - 1) >> shift
    prev_last = np.concatenate(([-1], np.maximum.accumulate(last)[:-1]))
    return int(np.maximum(last - np.maximum(first, prev_last + 1) + 1, 0).sum())


def max_vmpte_kb(proc: ProcessSnap) -> int:
    """The most VmPTE the VMAs of ``proc`` allow (see the module docstring)."""
    starts = np.array([v.start for v in proc.vmas], dtype=np.int64)
    ends = np.array([v.end for v in proc.vmas], dtype=np.int64)
    small = np.array([v.kind != "hugetlb" for v in proc.vmas], dtype=bool)
    tables = (spans_covered(starts[small], ends[small], PTE_SHIFT) + spans_covered(starts, ends, PMD_SHIFT)
              + spans_covered(starts, ends, PUD_SHIFT))
    return tables * TABLE_BYTES // 1024


def huge_file_kb(proc: ProcessSnap) -> int:
    """PTE tables the simulator builds for shmem/file pages the kernel maps with huge PMDs."""
    spans = sum(v.huge_pages // 512 for v in proc.vmas if v.kind not in (ANON, SPECIAL, "hugetlb"))
    return spans * TABLE_BYTES // 1024


def verdict(simulated_kb: int, measured_kb: int, proc: ProcessSnap) -> dict:
    """How the simulated VmPTE under ``linux`` compares with the kernel's."""
    most = max_vmpte_kb(proc)
    least = simulated_kb - huge_file_kb(proc)
    if measured_kb == simulated_kb:
        word = "exact"
    elif least <= measured_kb <= most:
        word = "within slack"
    else:
        word = "outside"
    return {"simulated_vmpte_kb": simulated_kb, "measured_vmpte_kb": measured_kb,
            "slack_kb": measured_kb - simulated_kb, "max_vmpte_kb": most, "verdict": word}
