"""Measured calls: the scenario's system calls, memory accesses and forks, made by a few hundred
bytes of x86-64 code (``measure.s``) that take the fault counts and the time just before and
just after the work, and run nothing else in between.

Why machine code: a worker's interpreter writes to its own memory all the time, and whenever a
page it writes has never been written (a new heap page) or has just been write-protected by a
fork, that is a fault ``getrusage()`` counts -- 15 to 30 of them after each fork, one now and then
otherwise, at random.  No Python runs between the two counts here: the code makes raw system
calls, uses no stack, and writes only its data page, a ``MAP_SHARED`` page (fork does not
write-protect shared pages) that the worker has faulted in before.  So every fault counted is
one the scenario's own operation took.  The time is taken around the same work, by
``CLOCK_MONOTONIC`` (wall time), or by ``CLOCK_THREAD_CPUTIME_ID`` when ``$PTSHARE_HOST_CLOCK`` is
``cpu`` (set by ``ptshare calibrate`` and ``ptshare validate --times``, and inherited by the
workers): the CPU time the worker's thread spent, in the kernel and in the touch loop, which
leaves out the time other processes held the CPU -- on a busy machine, most of a wall time.

A fork is done the same way; the interpreter's fork bookkeeping is done as ``os.fork()`` does it,
around the call and with the GIL held: ``PyOS_BeforeFork``, then ``PyOS_AfterFork_Parent`` or
``PyOS_AfterFork_Child``.  Where this differs from glibc's ``fork()``: ``pthread_atfork``
handlers do not run (a worker is single-threaded and registers none), and the child's thread id
in glibc's ``struct pthread`` is set by ``CLONE_CHILD_SETTID``, as glibc sets it.

The kernel writes to user memory on its own in one more case, the rseq area on return to user
space; the workers run with glibc's rseq registration turned off (``GLIBC_TUNABLES``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import signal
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from . import syscalls
from .workspace import raw_array

# The code of measure.s (objcopy -O binary -j .text, up to the end of `fork`).
CODE = bytes.fromhex(
    "b86200000031ff488d35f20f00000f05b8e40000008b3d9d110000488d35fe1000000f05488b051d110000488b3d1e11"
    "0000488b351f110000488b15201100004c8b15211100004c8b05221100004c8b0d231100000f05488905e2100000b8e4"
    "0000008b3d4f110000488d35c01000000f05b86200000031ff488d35101000000f05488b05b7100000c3b86200000031"
    "ff488d35680f00000f05b8e40000008b3d13110000488d35741000000f05488b3dcb100000488b0dcc100000488b35cd"
    "10000048833dd51000000075104885c9741b0fb6074801f748ffc9ebf04885c9740bc607014801f748ffc9ebf0b8e400"
    "00008b3dc0100000488d35311000000f05b86200000031ff488d35810f00000f0531c0c3b86200000031ff488d35de0e"
    "00000f05b8e40000008b3d89100000488d35ea0f00000f05488b3d41100000488b0d42100000488b154b10000048833d"
    "4b1000000075154885c97425488b020fb604074883c20848ffc9ebeb4885c97410488b02c60407014883c20848ffc9eb"
    "ebb8e40000008b3d2c100000488d359d0f00000f05b86200000031ff488d35ed0e00000f0531c0c3b86200000031ff48"
    "8d354a0e00000f05b8e40000008b3df50f0000488d35560f00000f05b838000000488b3dd00f000031f631d24c8b15cd"
    "0f00004531c00f054885c07e324889054c0f0000b8e40000008b3db90f0000488d352a0f00000f05b86200000031ff48"
    "8d357a0e00000f05488b05210f0000c3"
)
ENTRIES = {"do_syscall": 0x0, "touch_strided": 0x8A, "touch_listed": 0x114, "fork": 0x1A8}
# The data page, as 64-bit words (measure.s `data:`): struct rusage before (0..17), after (18..35),
# timespec t0 (36, 37) and t1 (38, 39), then the arguments.
_RU_MINFLT, _RU_MAJFLT = 8, 9
_BEFORE, _AFTER, _T0, _T1 = 0, 18, 36, 38
RESULT, NR, ARGS, BASE, COUNT, STRIDE, OFFSETS, WRITE = 40, 41, 42, 48, 49, 50, 51, 52
CLONE_FLAGS, CHILD_TID, CLOCK = 53, 54, 55

SYS_MMAP, SYS_MPROTECT, SYS_MUNMAP, SYS_MREMAP, SYS_MADVISE = 9, 10, 11, 25, 28
CLOCK_MONOTONIC, CLOCK_THREAD_CPUTIME_ID = 1, 3
CLOCK_ENV = "PTSHARE_HOST_CLOCK"  # "cpu": measured calls are timed by the thread's CPU time


@contextlib.contextmanager
def cpu_clock() -> Iterator[None]:
    """Inside, measured calls of workers started from here are timed by CPU time."""
    saved = os.environ.get(CLOCK_ENV)
    os.environ[CLOCK_ENV] = "cpu"
    try:
        yield
    finally:
        if saved is None:
            del os.environ[CLOCK_ENV]
        else:
            os.environ[CLOCK_ENV] = saved


def clock_id() -> int:
    """The clock measured calls read: see the module docstring."""
    return CLOCK_THREAD_CPUTIME_ID if os.environ.get(CLOCK_ENV) == "cpu" else CLOCK_MONOTONIC
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
        self.data[CLOCK] = clock_id()
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
