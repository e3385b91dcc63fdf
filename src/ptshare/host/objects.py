"""A scenario's backing objects made real: shmem objects are ``/dev/shm`` files, regular files are
files on disk (ext4 under /var/tmp), hugetlb objects are files on a hugetlbfs mounted for the run,
with ``vm.nr_hugepages`` raised for the run and given back afterwards.

Nothing is left behind even if the run is killed: each file is unlinked as soon as it is open (the
backend and the workers keep it alive by descriptor), the hugetlbfs is detached from the mount
namespace as soon as its files are open (it lives on until the last descriptor closes), and the
temporary directories are removed at once.  Only the huge-page reservation needs giving back,
which :meth:`HostObjects.close` does -- on any exception and on Ctrl-C too; a run killed with
SIGKILL leaves it raised (``sysctl vm.nr_hugepages`` shows it).
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
from pathlib import Path

from ..errors import PtshareError
from ..scenario.model import ObjectSpec
from . import syscalls

NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")
HPAGE_SIZE = 2 << 20
FILE_DIR = "/var/tmp"
SHM_DIR = "/dev/shm"
_LOCK_NAME = b"\0ptshare-host-hugetlb"  # an abstract socket: released by the kernel when its owner dies
LOCK_WAIT_S = 600


class HostError(PtshareError):
    """A scenario cannot be run on this host (platform, privileges, limits), or the host refused
    an operation.  The message names the limit or the call, and what to do."""


class TooLittleMemory(HostError):
    """The scenario would use more than half of the memory available on this host."""


def meminfo() -> dict[str, int]:
    """/proc/meminfo in kB (huge-page counts as numbers of pages)."""
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = int(value.split()[0])
    return out


class HostObjects:
    """The objects of one run, by name: ``fds[name]`` is an open descriptor for each."""

    def __init__(self, specs: list[ObjectSpec], hugepages: int) -> None:
        self.fds: dict[str, int] = {}
        self.kinds: dict[str, str] = {}
        self._added_hugepages = 0
        self._lock: socket.socket | None = None
        try:
            if hugepages:
                self._reserve(hugepages)
            self._open(specs)
        except BaseException:
            self.close()
            raise

    def _open(self, specs: list[ObjectSpec]) -> None:
        hugetlb = [s for s in specs if s.kind == "hugetlb"]
        mount = tempfile.mkdtemp(prefix="ptshare-hugetlbfs-") if hugetlb else None
        files = tempfile.mkdtemp(prefix="ptshare-files-", dir=FILE_DIR) if any(s.kind == "file" for s in specs) \
            else None
        try:
            if mount:
                syscalls.mount("ptshare", mount, "hugetlbfs", "pagesize=2M")
            for spec in specs:
                where = {"shmem": SHM_DIR, "file": files, "hugetlb": mount}[spec.kind]
                path = os.path.join(where, f"ptshare-{os.getpid()}-{spec.name}")
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                os.unlink(path)
                self.fds[spec.name] = fd
                self.kinds[spec.name] = spec.kind
                os.ftruncate(fd, spec.size)  # a sparse file: its pages are read in (zeros) on first access
        finally:
            if mount:
                with contextlib.suppress(OSError):  # not mounted: mount() failed, and that error is on its way
                    syscalls.umount_detach(mount)
                os.rmdir(mount)
            if files:
                os.rmdir(files)

    def _reserve(self, pages: int) -> None:
        """Raise vm.nr_hugepages by ``pages`` and check that the kernel found them."""
        self._lock = _take_lock()
        before = meminfo()["HugePages_Total"]
        free_before = meminfo()["HugePages_Free"]
        _write_nr_hugepages(before + pages)
        self._added_hugepages = meminfo()["HugePages_Total"] - before
        free = meminfo()["HugePages_Free"]
        if free - free_before < pages:
            raise HostError(f"this scenario needs {pages} huge pages of 2 MiB, but the kernel could reserve only "
                            f"{free - free_before} (vm.nr_hugepages {before} -> {before + pages}); memory is too "
                            "fragmented or too small -- free some memory, or make the hugetlb objects smaller")

    def truncate(self, name: str, size: int) -> None:
        try:
            os.ftruncate(self.fds[name], size)
        except OSError as exc:
            raise HostError(f"truncate of {name!r} to {size} bytes: {exc.strerror}") from None

    def close(self) -> None:
        """Close every object and give back the huge pages (idempotent)."""
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}
        if self._added_hugepages:
            total = meminfo()["HugePages_Total"]
            _write_nr_hugepages(max(0, total - self._added_hugepages))
            self._added_hugepages = 0
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _write_nr_hugepages(value: int) -> None:
    try:
        NR_HUGEPAGES.write_text(f"{value}\n")
    except OSError as exc:
        raise HostError(f"cannot set vm.nr_hugepages to {value}: {exc.strerror}") from None


def _take_lock() -> socket.socket:
    """One ptshare run at a time changes vm.nr_hugepages on this machine: wait for the others."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            sock.bind(_LOCK_NAME)
            return sock
        except OSError:
            if time.monotonic() > deadline:
                sock.close()
                raise HostError("another ptshare run has held the huge-page reservation for "
                                f"{LOCK_WAIT_S} s; wait for it to finish") from None
            time.sleep(0.2)
