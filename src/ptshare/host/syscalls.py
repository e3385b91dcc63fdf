"""The system calls the host backend makes that Python's ``os`` and ``mmap`` modules do not offer:
``mmap`` at a chosen address, ``munmap``, ``mprotect``, ``madvise``, ``mremap``, ``mount``, ``umount2``.

Each is a thin ctypes wrapper over glibc that raises :class:`OSError` (with ``errno``) on failure.
Constants are x86-64 Linux values (include/uapi/asm-generic/mman-common.h, linux/mman.h).
"""

from __future__ import annotations

import ctypes
import os

PROT_NONE = 0
PROT_READ = 1
PROT_WRITE = 2
PROT_EXEC = 4
PROTS = {"": PROT_NONE, "r": PROT_READ, "rw": PROT_READ | PROT_WRITE, "rx": PROT_READ | PROT_EXEC,
         "rwx": PROT_READ | PROT_WRITE | PROT_EXEC}

MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_NORESERVE = 0x4000
MAP_FIXED_NOREPLACE = 0x100000

MADV_RANDOM = 1
MADV_DONTNEED = 4
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADV_POPULATE_READ = 22
MADV_POPULATE_WRITE = 23

MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2

MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.mremap.restype = ctypes.c_void_p
_libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
for _name in ("munmap", "mprotect", "madvise"):
    getattr(_libc, _name).argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

MAP_FAILED = ctypes.c_void_p(-1).value


def _fail(call: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{call}: {os.strerror(err)}")


def mmap(addr: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    """mmap(2); returns the address of the mapping."""
    got = _libc.mmap(addr, length, prot, flags, fd, offset)
    if got == MAP_FAILED or got is None:
        raise _fail(f"mmap({addr:#x}, {length:#x})")
    return got


def munmap(addr: int, length: int) -> None:
    if _libc.munmap(addr, length):
        raise _fail(f"munmap({addr:#x}, {length:#x})")


def mprotect(addr: int, length: int, prot: int) -> None:
    if _libc.mprotect(addr, length, prot):
        raise _fail(f"mprotect({addr:#x}, {length:#x})")


def madvise(addr: int, length: int, advice: int) -> None:
    if _libc.madvise(addr, length, advice):
        raise _fail(f"madvise({addr:#x}, {length:#x}, {advice})")


def mremap(addr: int, old_size: int, new_size: int, flags: int, new_addr: int = 0) -> int:
    """mremap(2); returns the new address."""
    got = _libc.mremap(addr, old_size, new_size, flags, new_addr)
    if got == MAP_FAILED or got is None:
        raise _fail(f"mremap({addr:#x}, {old_size:#x}, {new_size:#x})")
    return got


def mount(source: str, target: str, fstype: str, options: str = "") -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), 0, options.encode()):
        raise _fail(f"mount -t {fstype} {target}")


def umount_detach(target: str) -> None:
    """umount2(target, MNT_DETACH): the mount leaves the namespace now and dies with its last user."""
    if _libc.umount2(target.encode(), MNT_DETACH):
        raise _fail(f"umount {target}")
