"""The policy base class: the decisions a page-table design makes, and nothing else.

A policy is consulted by fork (``dup_mmap``/``copy_page_range``), by the fault path and by every
walk that meets a shared table; the substrate does the work.  The defaults reproduce Linux 6.18.
A subclass may override exactly these hooks:

``name``, ``kernel``, ``summary``
    What the policy is called, which kernel (or patch) it models, one line on what it does.
``label``, ``words``
    How figures (``label``) and report sentences (``words``) name it.
``fault_around_pages``
    Pages mapped around a read fault on a file or shmem VMA (``fault_around_bytes`` / 4 KiB).
    16 since 3.15; 1 turns fault-around off.
``hugetlb_pmd_share``
    Whether hugetlb mappings share PMD tables (Ken Chen, 2.6.20 to today): read by the default
    :meth:`pmd_share_key`.
``vma_needs_copy(vma)``
    Whether fork copies the page tables of ``vma`` (models ``vma_needs_copy()``).
``pte_share_key(vma)``, ``pmd_share_key(vma)``, ``pud_share_key(vma)``
    The sharing rule for the PTE tables (2 MiB spans), PMD tables (1 GiB) or PUD tables (512 GiB)
    of ``vma``: ``None`` not to share them, or a :class:`ShareKey` ``(identity, origin, partner)``.
    The span at ``addr`` has the key ``(identity, addr - origin)``: spans with equal keys map the
    same pages the same way, so one table can serve them, and every user of a shared table keeps
    an equal key (the invariant checker verifies it with this hook).  A table is *found* by a VMA
    whose ``partner`` is equal too (McCracken's partners have the same ``vm_start`` and
    ``vm_end``).  The substrate shares only spans the VMA covers whole; a fault that needs such a
    table attaches a partner's if there is one (``huge_pmd_share``, McCracken's ``pt_share_pte``),
    or makes one that later partners can find.
``share_at_fork(vma)``
    Whether fork attaches the parent's shared tables of ``vma`` (and leaves the rest to faults)
    instead of copying or skipping its page tables (McCracken).
``unshare_mode``
    How the tables shared by key are unshared when one user changes its mapping: ``"drop"`` (the
    user clears its entry and refaults into a table of its own) or ``"copy"`` (the user gets a
    private copy of the table's contents).
``host_levels``
    The levels (above PTE) whose tables shared by key belong to a host mm rather than to their users
    (mshare): the users' VmPTE leaves them out, and tables inside them; PageTables counts them once.
    Empty by default: a shared table counts in every user's VmPTE, as Linux counts hugetlb's.
``cow_pte_tables(vma)``
    Whether fork, where it would copy the PTE tables of ``vma``, shares them copy-on-write
    instead: parent and child use the same table until one of them changes the span -- a fault
    included -- which then copies it first.  Only private (copy-on-write) mappings may; the pages'
    reference counts are raised when a table is copied, not at fork.
``cow_pte_count_at_fork``
    With ``cow_pte_tables``: whether fork counts the pages of a table it shares copy-on-write for
    the child at once (Lin's RFC, v3 on), rather than when a user copies the table (ODF).
``copy_lower_levels_async(vma)``
    Whether fork, where it copies the page tables of ``vma``, leaves the PMD and PTE levels to the
    child to copy off the parent's path, the parent copying a range itself first where it changes
    one the child has not copied yet (async-fork; see :mod:`ptshare.mm.asyncfork`).  Only the cost
    moves: the tables are Linux's.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from ..mm.vma import VMA

from ..arch import PAGE_SHIFT
from ..mm.vma import VM_LOCKED, VM_MAYSHARE, VM_MIXEDMAP, VM_PFNMAP

UNSHARE_MODES = ("drop", "copy")


class ShareKey(NamedTuple):
    """A sharing rule for the tables of one VMA: the span at ``addr`` has the key
    ``(identity, addr - origin)``, and spans with equal keys may share a table -- found by a VMA
    with an equal ``partner`` as well."""

    identity: Hashable
    origin: int
    partner: Hashable = None


def huge_pmd_share_key(vma: VMA) -> ShareKey | None:
    """Models the partner test of huge_pmd_share() (mm/hugetlb.c): a ``VM_MAYSHARE`` hugetlb VMA
    shares with any VMA of the same file with the same flags ignoring ``VM_LOCKED`` that maps the
    same file offset at the start of the 1 GiB window (virtual addresses may differ)."""
    if not (vma.is_hugetlb and vma.vm_flags & VM_MAYSHARE):
        return None
    return ShareKey(("hugetlb", vma.obj.id, vma.vm_flags & ~VM_LOCKED), vma.vm_start - (vma.vm_pgoff << PAGE_SHIFT))


class Policy:
    """Linux 6.18.  Subclasses override the hooks listed in the module docstring."""

    name = "linux"
    label = "Linux 6.18"
    words = "Linux 6.18"
    kernel = "Linux 6.18"
    summary = "skip page tables of VMAs without anon_vma at fork; fault-around 16; hugetlb PMD sharing"
    color = "#2ca02c"  # how every figure draws this policy: one colour and marker, whatever else is drawn
    marker = "^"
    fault_around_pages = 16
    hugetlb_pmd_share = True
    unshare_mode = "drop"
    cow_pte_count_at_fork = False
    host_levels: tuple[int, ...] = ()

    def vma_needs_copy(self, vma: VMA) -> bool:
        """Models vma_needs_copy() (mm/memory.c, 6.x): copy only what a fault cannot rebuild.

        Anonymous pages (a VMA with an ``anon_vma``) and raw PFN mappings must be copied; every
        other VMA is refilled by faults in the child, hugetlb included.
        """
        if vma.vm_flags & (VM_PFNMAP | VM_MIXEDMAP):
            return True
        return vma.anon_vma is not None

    def share_at_fork(self, vma: VMA) -> bool:
        return False

    def pte_share_key(self, vma: VMA) -> ShareKey | None:
        return None

    def pmd_share_key(self, vma: VMA) -> ShareKey | None:
        return huge_pmd_share_key(vma) if self.hugetlb_pmd_share else None

    def pud_share_key(self, vma: VMA) -> ShareKey | None:
        return None

    def cow_pte_tables(self, vma: VMA) -> bool:
        return False

    def copy_lower_levels_async(self, vma: VMA) -> bool:
        return False

    def share_key(self, level: int, vma: VMA) -> ShareKey | None:
        """The share key of ``vma``'s tables of ``level`` (0 PTE, 1 PMD, 2 PUD); not a hook."""
        if level == 0:
            return self.pte_share_key(vma)
        if level == 1:
            return self.pmd_share_key(vma)
        return self.pud_share_key(vma) if level == 2 else None

    def shares(self, vma: VMA) -> bool:
        """Whether any level of ``vma``'s tables may be shared by key; not a hook."""
        return any(self.share_key(level, vma) is not None for level in range(3))

    def __repr__(self) -> str:
        return f"<policy {self.name}: {self.kernel}>"
