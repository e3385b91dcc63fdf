"""Dave McCracken's shared page tables.

The 2006 "simple shared page tables" patch shares PTE tables of shareable VMAs; the 2005 patch
shared PMD tables too.  Both share a table only where a VMA covers the table's whole span, and find
partners through the file's ``i_mmap`` with the same ``vm_start``, ``vm_end``, ``vm_pgoff`` and
READ/WRITE/EXEC/SHARED flags -- so the same virtual address, which is why address-space
randomisation defeats them.  Here they share at fork (the child attaches the parent's tables) and
at fault time; everything else is Linux 6.18.
"""

from __future__ import annotations

from ..arch import PAGE_SHIFT
from ..mm.vma import VM_EXEC, VM_HUGETLB, VM_MIXEDMAP, VM_PFNMAP, VM_READ, VM_SHARED, VM_WRITE, VMA
from .base import Policy, ShareKey

_PARTNER_FLAGS = VM_READ | VM_WRITE | VM_EXEC | VM_SHARED


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


def mccracken_key(vma: VMA, min_size: int) -> ShareKey | None:
    """The partner test of pt_share_pte(): a shareable VMA of the same file with the same
    ``vm_start``, ``vm_end``, ``vm_pgoff`` and READ/WRITE/EXEC/SHARED flags.  Its tables map the
    same file pages at the same addresses with the same rights, which stays true of every user
    however its VMA is later split around the span."""
    if not mccracken_shareable(vma, min_size):
        return None
    return ShareKey((vma.obj.id, vma.vm_flags & _PARTNER_FLAGS), vma.vm_start - (vma.vm_pgoff << PAGE_SHIFT),
                    (vma.vm_start, vma.vm_end))


class SharedPT(Policy):
    name = "shared-pt"
    label = "shared page tables (2006)"
    words = "shared page tables"
    kernel = "McCracken 2006 (simple shared page tables) on Linux 6.18"
    summary = "as linux, plus PTE tables of shared file mappings shared at fork and at fault"
    color = "#9467bd"
    marker = "D"

    def share_at_fork(self, vma: VMA) -> bool:
        return self.pte_share_key(vma) is not None

    def pte_share_key(self, vma: VMA) -> ShareKey | None:
        return mccracken_key(vma, 2 << 20)


class SharedPT2005(SharedPT):
    name = "shared-pt-2005"
    label = "shared page tables (2005)"
    words = "2005 shared page tables"
    kernel = "McCracken 2005 (shared page tables) on Linux 6.18"
    summary = "as shared-pt, and PMD tables shared too where a VMA covers a whole 1 GiB span"
    color = "#8c564b"
    marker = "P"

    def pmd_share_key(self, vma: VMA) -> ShareKey | None:
        return mccracken_key(vma, 1 << 30) or super().pmd_share_key(vma)
