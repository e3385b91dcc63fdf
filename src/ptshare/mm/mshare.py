"""The host mm of an mshare region: the mm that holds the region's shared tables.

Models the host ``mm_struct`` of the mshare series (v3: made with the msharefs file; its region
starts at ``mshare_base``, 512 GiB, and maps the region's one shared anonymous object).  A
process's fault in the region walks the host's tables (``find_shared_vma``): a table a policy keeps
in the host (:attr:`Policy.host_levels`) is allocated there, entered in the host's directory and
then linked into the faulting process, as into every later one.  The host is no process (it is
kept by the region's object, not in the kernel's task list, and no report names it), but the
invariant checker walks it as it walks any mm; its use of the tables keeps them while no process
maps the region.  It exits when the region's file is unlinked (:func:`unlink_region`).

Differences: the series makes the host mm with the file, before any fault; here it is made at the
region's first fault under a policy that keeps tables in it (the only difference is when its PGD
starts to count in PageTables).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..arch import PAGE_SHIFT, PTRS_PER_TABLE, mk_shared
from .mm_struct import Task
from .pagecache import MSHARE_ALIGN, AddressSpace
from .pagewalk import PTE, account_alloc, dir_of
from .vma import VM_MAYREAD, VM_MAYSHARE, VM_MAYWRITE, VM_READ, VM_SHARED, VM_WRITE, VMA

if TYPE_CHECKING:
    from .kernel import Kernel

MSHARE_BASE = MSHARE_ALIGN
"""``mshare_base``: where the host mm maps the region."""


def host_of(k: Kernel, obj: AddressSpace) -> Task:
    """The host of region ``obj``, made at its first use: an mm mapping the whole region shared and
    writable at :data:`MSHARE_BASE` (its ``MSHAREFS_CREATE_MAPPING`` of ``MAP_SHARED | MAP_ANONYMOUS``)."""
    if obj.host is None:
        mm = k.new_mm(MSHARE_BASE)
        flags = VM_READ | VM_WRITE | VM_SHARED | VM_MAYREAD | VM_MAYWRITE | VM_MAYSHARE
        mm.insert_vma(VMA(mm=mm, vm_start=MSHARE_BASE, vm_end=MSHARE_BASE + obj.region, vm_flags=flags,
                          vm_pgoff=0, obj=obj))
        obj.host = Task(pid=0, name=f"[mshare host {obj.name}]", mm=mm)  # no pid: the processes' stay as under Linux
    return obj.host


def host_address(vma: VMA, bases: np.ndarray) -> np.ndarray:
    """Where the host maps the region addresses ``bases`` of the process mapping ``vma``."""
    return bases - vma.vm_start + (vma.vm_pgoff << PAGE_SHIFT) + MSHARE_BASE


def host_alloc(k: Kernel, vma: VMA, lvl: int, bases: np.ndarray, cids: np.ndarray, mode: int) -> np.ndarray:
    """New shared level-``lvl`` tables for the spans at ``bases`` of ``vma``, holding ``cids``: the
    host's (allocated in it, entered in its directories at the region's host addresses), not yet
    linked into any process.  Returns their ids."""
    host = host_of(k, vma.obj).mm
    sids = k.shared.new(lvl, cids, host.id, mode)
    account_alloc(k, host, lvl, len(sids))
    if lvl > PTE:
        host.boxes.update(sids.tolist())
    shift = k.geom.levels[lvl + 1].shift
    for sid, base in zip(sids.tolist(), host_address(vma, bases).tolist(), strict=True):
        directory = dir_of(k, host, lvl, base)
        k.stores[lvl + 1].entries[directory.cid, (base >> shift) & (PTRS_PER_TABLE - 1)] = mk_shared(sid)
        k.shared.get(sid)
    return sids


def unlink_region(k: Kernel, obj: AddressSpace) -> None:
    """``unlink()`` of the msharefs file: the host mm exits, freeing the tables it holds."""
    from .fork import do_exit

    if obj.host is not None:
        do_exit(k, obj.host)
    obj.host = None
