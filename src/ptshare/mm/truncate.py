"""Truncating a file: models ``truncate_pagecache()`` (mm/truncate.c) and, for hugetlbfs,
``hugetlb_vmdelete_list()``.

Every mapping of the pages past the new end is removed first -- shared tables are let go of, and
private copies of those pages go too (``unmap_mapping_range(..., even_cows=1)``) -- then the
page cache drops them.  Growing a file only changes its size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..arch import PAGE_SHIFT, PAGE_SIZE
from .pagecache import AddressSpace
from .unmap import zap_page_range
from .unshare import unshare_tables

if TYPE_CHECKING:
    from .kernel import Kernel


def do_truncate(k: Kernel, obj: AddressSpace, size: int) -> None:
    if obj.is_mshare and size != obj.size:
        raise ValueError(f"EINVAL: an mshare object's size is set once, when it is placed in its region ({obj.size} "
                         "bytes)")
    if size % (obj.page_size if obj.is_hugetlb else 1):
        raise ValueError(f"hugetlb files are truncated in whole 2 MiB pages, not to {size} bytes")
    old_pages = obj.nr_pages
    keep = -(-size // obj.page_size)
    if keep < old_pages:
        first = keep * (obj.page_size >> PAGE_SHIFT)  # first 4 KiB file index to go
        for vma in sorted(obj.i_mmap, key=lambda v: (v.mm.id, v.vm_start)):
            vma_last = vma.vm_pgoff + ((vma.vm_end - vma.vm_start) >> PAGE_SHIFT)
            if vma_last <= first:
                continue
            start = vma.vm_start + max(0, first - vma.vm_pgoff) * PAGE_SIZE
            if vma.is_hugetlb:
                hp = k.geom.hpage_size
                start = start // hp * hp
            # Only tables still shared with others are let go of (huge_pmd_unshare() does nothing to a
            # table with no other user); the last user's table stays, findable by later partners.
            unshare_tables(k, vma.mm, start, vma.vm_end, keep_sole=True)
            zap_page_range(k, vma.mm, start, vma.vm_end)
    dropped = obj.resize(size)
    k.frames.free(dropped)
    k.events.add("pages_freed", len(dropped))
