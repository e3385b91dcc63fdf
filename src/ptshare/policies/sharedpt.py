"""Dave McCracken's shared page tables.

The 2006 "simple shared page tables" patch shares PTE tables of shareable VMAs; the 2005 patch
shared PMD tables too.  Both share a table only where a VMA covers the table's whole span, and find
partners through the file's ``i_mmap`` with the same ``vm_start``, ``vm_end``, ``vm_pgoff`` and
READ/WRITE/EXEC/SHARED flags -- so the same virtual address, which is why address-space
randomisation defeats them.  Here they share at fork (the child attaches the parent's tables) and
at fault time; everything else is Linux 6.18.
"""

from __future__ import annotations

from ..mm.vma import VM_HUGETLB, VM_MIXEDMAP, VM_PFNMAP, VM_SHARED, VM_WRITE, VMA
from .base import Policy


def mccracken_shareable(vma: VMA, min_size: int) -> bool:
    """pt_shareable_flags(): file-backed (shmem included), no anonymous pages, not hugetlb or PFN,
    and shared or read-only -- a private writable mapping never shares -- and at least ``min_size``."""
    if vma.obj is None or vma.anon_vma is not None:
        return False
    if vma.vm_flags & (VM_HUGETLB | VM_PFNMAP | VM_MIXEDMAP):
        return False
    if not vma.vm_flags & VM_SHARED and vma.vm_flags & VM_WRITE:
        return False
    return vma.vm_end - vma.vm_start >= min_size


class SharedPT(Policy):
    name = "shared-pt"
    kernel = "McCracken 2006 (simple shared page tables) on Linux 6.18"
    summary = "as linux, plus PTE tables of shared file mappings shared at fork and at fault"
    color = "#9467bd"
    marker = "D"
    share_at_fork = True
    share_at_fault = True

    def pte_shareable(self, vma: VMA) -> bool:
        return mccracken_shareable(vma, 2 << 20)


class SharedPT2005(SharedPT):
    name = "shared-pt-2005"
    kernel = "McCracken 2005 (shared page tables) on Linux 6.18"
    summary = "as shared-pt, and PMD tables shared too where a VMA covers a whole 1 GiB span"
    color = "#8c564b"
    marker = "P"

    def pmd_shareable(self, vma: VMA) -> bool:
        return mccracken_shareable(vma, 1 << 30)
