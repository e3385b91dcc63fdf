"""The policy base class: the decisions a page-table design makes, and nothing else.

A policy is consulted by fork (``dup_mmap``/``copy_page_range``) and by the fault path; the
substrate does the work.  The defaults reproduce Linux 6.18.  A subclass may override exactly
these hooks:

``name``, ``kernel``, ``summary``
    What the policy is called, which kernel (or patch) it models, one line on what it does.
``fault_around_pages``
    Pages mapped around a read fault on a file or shmem VMA (``fault_around_bytes`` / 4 KiB).
    16 since 3.15; 1 turns fault-around off.
``hugetlb_pmd_share``
    Whether hugetlb mappings share PMD tables (Ken Chen, 2.6.20 to today).
``vma_needs_copy(vma)``
    Whether fork copies the page tables of ``vma`` (models ``vma_needs_copy()``).
``pte_shareable(vma)``
    Whether the PTE tables of ``vma`` may be shared between mms (McCracken).  Sharing is then
    done by the substrate for every 2 MiB span the VMA covers whole: at fork when
    ``share_at_fork``, and at fault time when ``share_at_fault``.
``pmd_shareable(vma)``
    Whether PMD tables of ``vma`` may be shared too (McCracken 2005), for every 1 GiB span the
    VMA covers whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..mm.vma import VMA

from ..mm.vma import VM_MIXEDMAP, VM_PFNMAP


class Policy:
    """Linux 6.18.  Subclasses override the hooks listed in the module docstring."""

    name = "linux"
    kernel = "Linux 6.18"
    summary = "skip page tables of VMAs without anon_vma at fork; fault-around 16; hugetlb PMD sharing"
    color = "#2ca02c"  # how every figure draws this policy: one colour and marker, whatever else is drawn
    marker = "^"
    fault_around_pages = 16
    hugetlb_pmd_share = True
    share_at_fork = False
    share_at_fault = False

    def vma_needs_copy(self, vma: VMA) -> bool:
        """Models vma_needs_copy() (mm/memory.c, 6.x): copy only what a fault cannot rebuild.

        Anonymous pages (a VMA with an ``anon_vma``) and raw PFN mappings must be copied; every
        other VMA is refilled by faults in the child, hugetlb included.
        """
        if vma.vm_flags & (VM_PFNMAP | VM_MIXEDMAP):
            return True
        return vma.anon_vma is not None

    def pte_shareable(self, vma: VMA) -> bool:
        return False

    def pmd_shareable(self, vma: VMA) -> bool:
        return False

    def __repr__(self) -> str:
        return f"<policy {self.name}: {self.kernel}>"
