"""Measured calls: the scenario's system calls, memory accesses and forks, made by a few hundred
bytes of x86-64 code (``measure.s``) that take the fault counts and the time just before and
just after the work, and run nothing else in between.

Why machine code: a worker's interpreter writes to its own memory all the time, and whenever a
page it writes has never been written (a new heap page) or has just been write-protected by a
fork, that is a fault ``getrusage()`` counts -- 15 to 30 of them after each fork, one now and then
otherwise, at random.  No Python runs between the two counts here: the code makes raw system
calls, uses no stack, and writes only its data page, a ``MAP_SHARED`` page (fork does not
write-protect shared pages) that the worker has faulted in before.  So every fault counted is
one the scenario's own operation took.  The time is ``CLOCK_MONOTONIC`` around the same work.

A fork is done the same way; the interpreter's fork bookkeeping is done as ``os.fork()`` does it,
around the call and with the GIL held: ``PyOS_BeforeFork``, then ``PyOS_AfterFork_Parent`` or
``PyOS_AfterFork_Child``.  Where this differs from glibc's ``fork()``: ``pthread_atfork``
handlers do not run (a worker is single-threaded and registers none), and the child's thread id
in glibc's ``struct pthread`` is set by ``CLONE_CHILD_SETTID``, as glibc sets it.

The kernel writes to user memory on its own in one more case, the rseq area on return to user
space; the workers run with glibc's rseq registration turned off (``GLIBC_TUNABLES``).
"""

from __future__ import annotations

import ctypes
import os
import platform
import signal
import struct
import threading
from dataclasses import dataclass

from . import syscalls
from .workspace import raw_array

# The code of measure.s (objcopy -O binary -j .text, up to the end of `fork`).
CODE = bytes.fromhex(
    "b86200000031ff488d35f20f00000f05b8e4000000bf01000000488d35ff1000000f05488b051e110000488b3d1f1100"
    "00488b3520110000488b15211100004c8b15221100004c8b05231100004c8b0d241100000f05488905e3100000b8e400"
    "0000bf01000000488d35c21000000f05b86200000031ff488d35121000000f05488b05b9100000c3b86200000031ff48"
    "8d356a0f00000f05b8e4000000bf01000000488d35771000000f05488b3dce100000488b0dcf100000488b35d0100000"
    "48833dd81000000075104885c9741b0fb6074801f748ffc9ebf04885c9740bc607014801f748ffc9ebf0b8e4000000bf"
    "01000000488d35351000000f05b86200000031ff488d35850f00000f0531c0c3b86200000031ff488d35e20e00000f05"
    "b8e4000000bf01000000488d35ef0f00000f05488b3d46100000488b0d47100000488b155010000048833d5010000000"
    "75154885c97425488b020fb604074883c20848ffc9ebeb4885c97410488b02c60407014883c20848ffc9ebebb8e40000"
    "00bf01000000488d35a30f00000f05b86200000031ff488d35f30e00000f0531c0c3b86200000031ff488d35500e0000"
    "0f05b8e4000000bf01000000488d355d0f00000f05b838000000488b3dd70f000031f631d24c8b15d40f00004531c00f"
    "054885c07e31488905530f0000b8e4000000bf01000000488d35320f00000f05b86200000031ff488d35820e00000f05"
    "488b05290f0000c3"
)
ENTRIES = {"do_syscall": 0x0, "touch_strided": 0x88, "touch_listed": 0x110, "fork": 0x1A2}
# The data page, as 64-bit words (measure.s `data:`): struct rusage before (0..17), after (18..35),
# timespec t0 (36, 37) and t1 (38, 39), then the arguments.
_RU_MINFLT, _RU_MAJFLT = 8, 9
_BEFORE, _AFTER, _T0, _T1 = 0, 18, 36, 38
RESULT, NR, ARGS, BASE, COUNT, STRIDE, OFFSETS, WRITE, CLONE_FLAGS, CHILD_TID = 40, 41, 42, 48, 49, 50, 51, 52, 53, 54

SYS_MMAP, SYS_MPROTECT, SYS_MUNMAP, SYS_MREMAP, SYS_MADVISE = 9, 10, 11, 25, 28
CLONE_CHILD_SETTID = 0x01000000
_NAMES = {SYS_MMAP: "mmap", SYS_MPROTECT: "mprotect", SYS_MUNMAP: "munmap", SYS_MREMAP: "mremap",
          SYS_MADVISE: "madvise"}


@dataclass(frozen=True)
class Cost:
    """What one measured call cost: minor and major faults, and nanoseconds."""

    minflt: int = 0
    majflt: int = 0
    ns: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.minflt + other.minflt, self.majflt + other.majflt, self.ns + other.ns)


def supported() -> bool:
    return platform.machine() == "x86_64"


class Meter:
    """The code and its data page, mapped once per worker (a forked child inherits them)."""

    def __init__(self) -> None:
        if not supported():
            raise OSError(f"the host backend's measured calls are x86-64 code; this machine is {platform.machine()}")
        rw = syscalls.PROT_READ | syscalls.PROT_WRITE
        self._page = syscalls.mmap(0, 8192, rw, syscalls.MAP_SHARED | syscalls.MAP_ANONYMOUS)
        ctypes.memmove(self._page, CODE, len(CODE))
        syscalls.mprotect(self._page, 4096, syscalls.PROT_READ | syscalls.PROT_EXEC)
        self.data = raw_array(self._page + 4096, 512, 8, "<i8")
        # PYFUNCTYPE: the calls keep the GIL (there is no other thread), as os.fork() does.
        proto = ctypes.PYFUNCTYPE(ctypes.c_long)
        self._call = {name: proto(self._page + offset) for name, offset in ENTRIES.items()}
        self._api = ctypes.pythonapi
        self.fault_in()

    def close(self) -> None:
        """Unmap the code and data pages (a forked child makes a meter of its own: the data page
        is shared with the parent, whose counts must not be overwritten)."""
        syscalls.munmap(self._page, 8192)

    def fault_in(self) -> None:
        """Map the code and data pages in this process (a forked child must, before measuring)."""
        self.data[COUNT] = 0
        self._call["touch_strided"]()  # no accesses: runs the code, and the kernel writes the data page

    def _cost(self) -> Cost:
        d = self.data
        return Cost(int(d[_AFTER + _RU_MINFLT] - d[_BEFORE + _RU_MINFLT]),
                    int(d[_AFTER + _RU_MAJFLT] - d[_BEFORE + _RU_MAJFLT]),
                    int((d[_T1] - d[_T0]) * 1_000_000_000 + d[_T1 + 1] - d[_T0 + 1]))

    def syscall(self, nr: int, *args: int) -> tuple[int, Cost]:
        """One system call; raises OSError if it fails."""
        d = self.data
        d[NR] = nr
        d[ARGS:ARGS + 6] = (*args, *[0] * (6 - len(args)))
        result = self._call["do_syscall"]()
        if -4096 < result < 0:
            raise OSError(-result, f"{_NAMES.get(nr, nr)}({', '.join(hex(a) for a in args)}): {os.strerror(-result)}")
        return result, self._cost()

    def touch(self, base: int, count: int, write: bool, *, stride: int = 0, offsets: int = 0) -> Cost:
        """Access the byte at ``base + i * stride``, or at ``base + offsets[i]`` (an int64 array at
        address ``offsets``), for i = 0 .. count-1, in order."""
        d = self.data
        d[BASE], d[COUNT], d[STRIDE], d[OFFSETS], d[WRITE] = base, count, stride, offsets, int(write)
        self._call["touch_listed" if offsets else "touch_strided"]()
        d[COUNT] = 0
        return self._cost()

    def fork(self) -> tuple[int, Cost]:
        """A real fork: (0, Cost()) in the child; (the child's pid, the parent's cost) in the parent."""
        d = self.data
        child_tid = _glibc_tid_field()
        d[CLONE_FLAGS] = int(signal.SIGCHLD) | (CLONE_CHILD_SETTID if child_tid else 0)
        d[CHILD_TID] = child_tid
        self._api.PyOS_BeforeFork()
        pid = self._call["fork"]()
        if pid == 0:
            self._api.PyOS_AfterFork_Child()
            return 0, Cost()
        self._api.PyOS_AfterFork_Parent()
        if pid < 0:
            raise OSError(-pid, f"fork: {os.strerror(-pid)}")
        return pid, self._cost()


_TID_FIELD: list[int] = []


def _glibc_tid_field() -> int:
    """The address of this thread's ``tid`` in glibc's ``struct pthread``, or 0 if it cannot be
    found for certain: the one 32-bit word in the first 4 KiB of the descriptor equal to gettid().
    (The same address in a forked child: the child's memory is a copy.)"""
    if not _TID_FIELD:
        libc = ctypes.CDLL(None)
        libc.pthread_self.restype = ctypes.c_void_p
        descriptor = libc.pthread_self()
        words = struct.unpack("1024i", ctypes.string_at(descriptor, 4096))
        hits = [n for n, w in enumerate(words) if w == threading.get_native_id()]
        _TID_FIELD.append(descriptor + 4 * hits[0] if len(hits) == 1 else 0)
    return _TID_FIELD[0]
