"""The designs Linux shipped before and after lazy page-table copy."""

from __future__ import annotations

from ..mm.vma import VM_HUGETLB, VM_PFNMAP, VMA
from .base import Policy


class Linux(Policy):
    """Linux 6.18: the base class's defaults."""


class LinuxNoPmdShare(Policy):
    """Linux 6.18 without hugetlb PMD sharing, as before 2.6.20 or on an architecture without
    ``ARCH_WANT_HUGE_PMD_SHARE``: every process has its own PMD tables for hugetlb mappings."""

    name = "linux-no-pmd-share"
    label = words = "Linux 6.18 without PMD sharing"
    kernel = "Linux 6.18, hugetlb PMD sharing off"
    summary = "as linux, but every process has its own PMD tables for hugetlb mappings"
    color = "#ff7f0e"
    marker = "v"
    hugetlb_pmd_share = False


class Eager(Policy):
    """Linux up to 2.6.13: ``copy_page_range`` copied the page tables of every VMA at fork."""

    name = "eager"
    label = "eager (<= 2.6.13)"
    words = "eager copy"
    kernel = "Linux <= 2.6.13"
    summary = "copy the page tables of every VMA at fork; no fault-around; no hugetlb PMD sharing"
    color = "#1f77b4"
    marker = "o"
    fault_around_pages = 1
    hugetlb_pmd_share = False

    def vma_needs_copy(self, vma: VMA) -> bool:
        return True


class Lazy(Policy):
    """Linux 2.6.14: Nick Piggin's lazy copy.

    "Don't copy ptes where a page fault will fill them correctly": fork skips a VMA unless it has
    an ``anon_vma`` or is hugetlb, nonlinear or reserved (here: hugetlb or a PFN mapping).
    """

    name = "lazy"
    label = "lazy (2.6.14)"
    words = "lazy copy"
    kernel = "Linux 2.6.14"
    summary = "skip page tables at fork unless the VMA has anon_vma or is hugetlb; no fault-around"
    color = "#d62728"
    marker = "s"
    fault_around_pages = 1
    hugetlb_pmd_share = False

    def vma_needs_copy(self, vma: VMA) -> bool:
        if vma.vm_flags & (VM_HUGETLB | VM_PFNMAP):
            return True
        return vma.anon_vma is not None
