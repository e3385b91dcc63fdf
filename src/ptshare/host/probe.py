"""The bad access, made on the real kernel: a scenario process the simulator kills with SIGSEGV or
SIGBUS makes the access that kills it in a forked copy of itself, traced, so that the signal and
the faulting address the kernel reports (``siginfo_t.si_addr``) can be compared with the
simulator's -- and the process itself lives on to report its counters.

The copy is a plain ``fork()``: it has the same mappings, the same files and the same memory, so
an access that faults there faults in the process too.  It stops itself for its tracer, makes the
accesses, and the tracer sees the signal delivered (``PTRACE_GETSIGINFO``) and kills it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
from collections.abc import Callable

PTRACE_TRACEME = 0
PTRACE_CONT = 7
PTRACE_GETSIGINFO = 0x4202
SIGINFO_SIZE = 128
_SIGNALS = {signal.SIGSEGV: "SIGSEGV", signal.SIGBUS: "SIGBUS"}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


def _ptrace(request: int, pid: int, data: ctypes.Array | None = None) -> None:
    if _libc.ptrace(request, pid, None, data) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"ptrace({request:#x}, {pid}): {os.strerror(err)}")


def fatal_access(accesses: Callable[[], object]) -> tuple[str | None, int | None]:
    """Run ``accesses`` in a traced copy of this process.  Returns the signal that stopped it
    (``"SIGSEGV"``, ``"SIGBUS"``, or another signal's name) and its faulting address, or
    ``(None, None)`` if the accesses all went through."""
    old = signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # wait for the copy (workers auto-reap)
    try:
        pid = os.fork()
        if pid == 0:
            try:
                _ptrace(PTRACE_TRACEME, 0)
                os.kill(os.getpid(), signal.SIGSTOP)
                accesses()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)  # stopped by its own SIGSTOP
        _ptrace(PTRACE_CONT, pid)
        _, status = os.waitpid(pid, 0)
        if not os.WIFSTOPPED(status):
            return None, None
        info = ctypes.create_string_buffer(SIGINFO_SIZE)
        _ptrace(PTRACE_GETSIGINFO, pid, info)
        signo, _errno, _code, _pad, addr = struct.unpack_from("iiiiQ", info.raw)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return _SIGNALS.get(signo, signal.Signals(signo).name), addr
    finally:
        signal.signal(signal.SIGCHLD, old)
