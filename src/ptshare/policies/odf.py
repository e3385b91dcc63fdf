"""On-demand-fork (Kaiyang Zhao, Sishuai Gong and Pedro Fonseca, EuroSys 2021).

Fork shares the last-level (PTE) tables of private anonymous memory with the child instead of
copying them: both PMD entries point at the parent's table, write-protected, and the table's
reference count is raised.  The first change to a 2 MiB span -- a write fault, a fault that fills
an entry, or mprotect, munmap, mremap, MADV_DONTNEED, a VMA split -- copies that one table for the
process making it (and only then takes the references on the pages it maps), after which the change
proceeds as usual.  A table no one changes is never copied.  As in the paper and in Chih-En Lin's
RFC that follows it, only anonymous memory is shared this way, and only a table whose whole span
lies in one VMA; everything else is Linux 6.18.  docs/model.md says which version is modelled and
where the model simplifies.
"""

from __future__ import annotations

from ..mm.vma import VMA
from .base import Policy


class OnDemandFork(Policy):
    name = "odf"
    label = "On-demand fork (2021)"
    words = "on-demand fork"
    color = "#e377c2"
    marker = "X"
    kernel = "On-demand-fork (Zhao et al., EuroSys 2021) on Linux 6.18"
    summary = ("as linux, but fork shares the PTE tables of private anonymous memory copy-on-write; "
               "the first change in a 2 MiB span copies that table")

    def cow_pte_tables(self, vma: VMA) -> bool:
        return vma.obj is None and vma.is_cow_mapping


class CowPT(OnDemandFork):
    """Chih-En Lin's "Introduce Copy-On-Write to Page Table" (v4, February 2023), which builds on
    ODF: the same tables are shared, but fork runs ``copy_present_pte`` on every entry of a table it
    shares (``copy_cow_pte_range``): each page gains its mapping for the child and each entry is
    write-protected at fork, so a later copy of the table takes no page references."""

    name = "cow-pt"
    label = "COW page tables (RFC v4, 2023)"
    words = "copy-on-write page tables"
    color = "#bcbd22"
    marker = "h"
    kernel = "Copy-On-Write to Page Table RFC v4 (Chih-En Lin, 2023) on Linux 6.18"
    summary = ("as odf, but fork counts the pages of every table it shares for the child at once "
               "(the page references ODF defers to the table copy)")
    cow_pte_count_at_fork = True
