"""Async-fork (Pu Pang, Gang Deng, Kaihao Bai, Quan Chen et al., Alibaba and Shanghai Jiao Tong
University, PVLDB 16(5), 2023).

Fork copies the VMAs and the upper levels of the page tables and returns; the child copies the PMD
and PTE levels off the parent's path, before it runs; a parent about to change a range whose tables
the child has not copied yet (a write, a fault that fills an entry, mprotect, munmap, madvise,
mremap, exit...) copies that range to the child itself first, on its own path ("proactive
synchronisation").  What is copied, and so what every process maps, is what Linux 6.18 copies;
only when and on whose path the copy is paid differs.  :mod:`ptshare.mm.asyncfork` says how the
simulator counts it; docs/model.md which version is modelled and where the model simplifies.
"""

from __future__ import annotations

from ..mm.vma import VMA
from .base import Policy


class AsyncFork(Policy):
    name = "async-fork"
    label = "Async-fork (2023)"
    words = "async-fork"
    color = "#17becf"
    marker = "*"
    kernel = "Async-fork (Pang et al., PVLDB 2023) on Linux 6.18"
    summary = ("as linux, but the child copies the PMD and PTE levels off the parent's path; the parent "
               "copies a range first where it changes one not yet copied")

    def copy_lower_levels_async(self, vma: VMA) -> bool:
        return True
