"""Reading a live process from /proc: ``stat``, ``cmdline``, ``status`` and ``smaps``.

Every read goes through :func:`read_proc`, which turns the ways a read fails into the two errors
a snapshot can act on: the process is gone (it exited, or its pid was reused), or this user may
not read it.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass, field

from ..errors import PtshareError

PROC = "/proc"


class ProcessGone(PtshareError):
    """Raised when a process exits (or is reaped and its pid reused) while it is being read."""

    def __init__(self, pid: int, what: str = "exited while being read"):
        self.pid = pid
        super().__init__(f"process {pid} {what}")


class NoAccess(PtshareError):
    """Raised when /proc refuses to show a process to this user (ptrace access mode checks)."""

    def __init__(self, pid: int, name: str):
        self.pid = pid
        super().__init__(f"no permission to read /proc/{pid}/{name}: run ptshare snapshot as root, "
                         f"or as the user that owns process {pid}")


def read_proc(pid: int, name: str) -> bytes:
    """The contents of ``/proc/PID/NAME``.  Raises :class:`ProcessGone` or :class:`NoAccess`."""
    try:
        with open(f"{PROC}/{pid}/{name}", "rb", buffering=0) as f:
            return f.read()
    except PermissionError:
        raise NoAccess(pid, name) from None
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ESRCH):
            raise ProcessGone(pid) from None
        if exc.errno == errno.EACCES:
            raise NoAccess(pid, name) from None
        raise ProcessGone(pid, f"could not be read ({name}: {exc.strerror})") from None


@dataclass(frozen=True)
class Stat:
    """The fields of ``/proc/PID/stat`` a snapshot uses."""

    pid: int
    comm: str
    state: str
    ppid: int
    starttime: int  # clock ticks after boot: with the pid, identifies the process


def read_stat(pid: int) -> Stat:
    raw = read_proc(pid, "stat").decode("utf-8", "replace")
    if not raw:
        raise ProcessGone(pid)
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    rest = raw[raw.rindex(")") + 2:].split()
    return Stat(pid=pid, comm=comm, state=rest[0], ppid=int(rest[1]), starttime=int(rest[19]))


def read_cmdline(pid: int) -> list[str]:
    raw = read_proc(pid, "cmdline")
    return [a.decode("utf-8", "replace") for a in raw.rstrip(b"\0").split(b"\0")] if raw else []


_KB_FIELD = re.compile(rb"^(\w+):\s+(\d+) kB$", re.M)


def read_status(pid: int) -> dict[str, int]:
    """The ``kB`` lines of ``/proc/PID/status`` (VmPTE, VmRSS, RssAnon...), in kB."""
    raw = read_proc(pid, "status")
    return {k.decode(): int(v) for k, v in _KB_FIELD.findall(raw)}


@dataclass
class MapsEntry:
    """One VMA as ``/proc/PID/smaps`` shows it."""

    start: int
    end: int
    perms: str  # "rw-p", "r--s"...
    offset: int  # bytes into the file
    dev: str  # "fe:01"
    inode: int
    path: str  # "" for anonymous memory; "[heap]", "/SYSV0052e2c1 (deleted)"...
    fields: dict[str, int] = field(default_factory=dict)  # smaps lines, in kB
    vmflags: frozenset[str] = frozenset()

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"


_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) (\S+) (\d+)\s*(.*)$")


def parse_smaps(text: str) -> list[MapsEntry]:
    """The VMAs of an smaps (or maps) text, in address order."""
    out: list[MapsEntry] = []
    for line in text.splitlines():
        if not line:
            continue
        if line[0].isupper():
            key, _, value = line.partition(":")
            if key == "VmFlags":
                out[-1].vmflags = frozenset(value.split())
            elif value.endswith(" kB"):
                out[-1].fields[key] = int(value[:-3])
            continue
        m = _HEADER.match(line)
        if m is None:
            continue
        start, end, perms, offset, dev, inode, path = m.groups()
        out.append(MapsEntry(int(start, 16), int(end, 16), perms, int(offset, 16), dev, int(inode), path))
    return out


def read_smaps(pid: int) -> list[MapsEntry]:
    return parse_smaps(read_proc(pid, "smaps").decode("utf-8", "replace"))


def read_meminfo() -> dict[str, int]:
    """``/proc/meminfo`` in kB (PageTables, MemTotal...)."""
    with open(f"{PROC}/meminfo", "rb") as f:
        return {k.decode(): int(v) for k, v in _KB_FIELD.findall(f.read())}


def all_pids() -> list[int]:
    return sorted(int(name) for name in os.listdir(PROC) if name.isdigit())


def mount_fstypes(pid: int) -> dict[str, str]:
    """``major:minor`` -> filesystem type, from the mount namespace of ``pid`` (empty if unreadable)."""
    try:
        raw = read_proc(pid, "mountinfo").decode("utf-8", "replace")
    except PtshareError:
        return {}
    out = {}
    for line in raw.splitlines():
        left, sep, right = line.partition(" - ")
        parts = left.split()
        if sep and len(parts) > 2:
            major, minor = parts[2].split(":")
            out[f"{int(major):02x}:{int(minor):02x}"] = right.split()[0]
    return out
