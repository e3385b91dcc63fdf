"""mshare: page tables shared through msharefs (Khalid Aziz, then Anthony Yznaga, Oracle; v3, August 2025).

A file on msharefs is a region whose page tables live in a separate *host* mm.  Processes map the
file, whole and at a multiple of 512 GiB; the first access of a process to each 512 GiB span links
its PGD entry to the host's PUD table (one fault, ``find_shared_vma``), and every fault in the
region is handled in the host mm, so it fills the tables every attacher uses.  A process that maps
a populated region therefore takes one fault per 512 GiB span and allocates no table for it.
Here the host's PUD table is a table shared by key at the PUD level: the key is the region and
the file offset, so every process that maps the region finds it, whatever address it chose.

The tables are the host mm's, not an attacher's: no process's VmPTE counts them (PageTables does,
once).  The region's own rules (mapped whole, never split, mprotect and mremap refused) belong to the
file, so they hold under every policy (:mod:`ptshare.mm.mmap`); everything else is Linux 6.18.
docs/model.md says which version is modelled and where the model simplifies.
"""

from __future__ import annotations

from ..arch import PAGE_SHIFT
from ..mm.pagewalk import PUD
from ..mm.vma import VMA
from .base import Policy, ShareKey


class Mshare(Policy):
    name = "mshare"
    label = "mshare (2025)"
    words = "mshare"
    color = "#7f7f7f"
    marker = "p"
    kernel = "mshare v3 (Yznaga, August 2025) on Linux 6.18"
    summary = ("as linux, plus the PUD tables of mshare regions held by a host mm and linked into every "
               "process that maps the region; faults fill them for all")
    host_levels = (PUD,)

    def pud_share_key(self, vma: VMA) -> ShareKey | None:
        if vma.obj is None or not vma.obj.is_mshare:
            return None
        return ShareKey(("mshare", vma.obj.id), vma.vm_start - (vma.vm_pgoff << PAGE_SHIFT))
