"""The workspace: one shared memory file that the backend and every worker map.

It carries the offsets of a random or zipf touch, written by the backend (at most
:data:`CAPACITY` at a time), so that a worker never allocates memory for them, and a scratch page
that warm-up runs touch.  A worker faults it in once (a forked child again, since fork does not
copy the page tables of shared mappings), so its page tables never change after.
"""

from __future__ import annotations

import os

import numpy as np

from . import syscalls

CAPACITY = 1 << 20  # offsets of one chunk of a listed touch
_SCRATCH = 8 * CAPACITY
SIZE = _SCRATCH + 4096


def create() -> int:
    """A new, unnamed workspace file (memfd); returns its descriptor."""
    fd = os.memfd_create("ptshare-workspace", 0)
    os.ftruncate(fd, SIZE)
    return fd


def raw_array(addr: int, n: int, stride: int = 1, typestr: str = "|u1") -> np.ndarray:
    """A numpy array over memory at ``addr``: ``n`` items ``stride`` bytes apart (no copy)."""

    class _Memory:
        def __init__(self) -> None:
            self.__array_interface__ = {"data": (addr, False), "shape": (n,), "strides": (stride,),
                                        "typestr": typestr, "version": 3}

    return np.asarray(_Memory())


class Workspace:
    """The workspace mapped into this process: ``idx`` (int64 offsets) at ``idx_addr``, then the
    scratch page, whose second half stays zero (``zero_offsets``, offsets for warm-up runs)."""

    def __init__(self, fd: int) -> None:
        prot = syscalls.PROT_READ | syscalls.PROT_WRITE
        self.addr = syscalls.mmap(0, SIZE, prot, syscalls.MAP_SHARED, fd)
        self.idx_addr = self.addr
        self.idx = raw_array(self.idx_addr, CAPACITY, 8, "<i8")
        self.scratch = self.addr + _SCRATCH
        self.zero_offsets = self.scratch + 2048

    def close(self) -> None:
        syscalls.munmap(self.addr, SIZE)

    def fault_in(self) -> None:
        """Map every page of the workspace in this process (its tables are then complete)."""
        syscalls.madvise(self.addr, SIZE, syscalls.MADV_POPULATE_WRITE)
