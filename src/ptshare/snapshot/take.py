"""Taking a snapshot: choosing the processes, reading each, and finding what they share."""

from __future__ import annotations

import os
import platform
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..arch import PAGE_SIZE
from ..errors import PtshareError, UsageError
from .model import ANON, SCHEMA, SPECIAL, ObjectSnap, ProcessSnap, Snapshot, VmaSnap
from .procfs import (
    NoAccess,
    ProcessGone,
    all_pids,
    mount_fstypes,
    read_cmdline,
    read_meminfo,
    read_stat,
)
from .reader import Reader, ReadResult

HPAGE_SIZE = 2 << 20
SHMEM_FSTYPES = {"tmpfs", "shm", "ramfs"}
# Names the kernel gives shmem files it creates itself (SysV segments, MAP_SHARED|MAP_ANONYMOUS, memfd).
_SHMEM_PATH = re.compile(r"^(/SYSV[0-9a-f]{8}|/dev/zero|/memfd:|\[anon_shmem:|/anon_hugepage)")
_KERNEL_SPECIAL = {"[vdso]", "[vvar]", "[vvar_vclock]", "[uprobes]", "[sigpage]"}


# --- which processes ----------------------------------------------------------------------------

def select_pids(pid: int | None = None, children: bool = False, match: str | None = None) -> list[int]:
    """The processes a snapshot reads.  Raises UsageError when there are none."""
    if pid is not None:
        try:
            read_stat(pid)
        except ProcessGone:
            raise UsageError(f"no process with pid {pid}") from None
        return [pid, *descendants(pid)] if children else [pid]
    assert match is not None
    found = [p for p in all_pids() if p != os.getpid() and _matches(p, match)]
    if not found:
        raise UsageError(f"no process matches {match!r} (its command name or program name)")
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` in the process tree, parents before children."""
    children: dict[int, list[int]] = {}
    for p in all_pids():
        try:
            children.setdefault(read_stat(p).ppid, []).append(p)
        except (ProcessGone, NoAccess):
            continue
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _matches(pid: int, name: str) -> bool:
    """Whether ``name`` occurs in the command name (comm) or the program name (argv[0])."""
    try:
        comm = read_stat(pid).comm
        argv = read_cmdline(pid)
    except (ProcessGone, NoAccess):
        return False
    return name in comm or (bool(argv) and name in argv[0])


# --- reading ------------------------------------------------------------------------------------

def take(pids: list[int], method: str = "auto", jobs: int = 1) -> Snapshot:
    """Read ``pids`` into a snapshot, ``jobs`` processes at a time.  A process that cannot be read
    makes the snapshot partial."""
    t0 = time.perf_counter()
    reader = Reader(method)

    def read(pid: int) -> ReadResult | PtshareError:
        try:
            return reader.read(pid)
        except (ProcessGone, NoAccess) as exc:
            return exc

    # The kernel's page-table walks (smaps, pagemap) dominate and run outside the GIL.
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        results = list(pool.map(read, pids))
    problems = [str(r) for r in results if isinstance(r, PtshareError)]
    done = [r for r in results if isinstance(r, ReadResult)]
    processes = [r.process for r in done]
    pfns = [r.anon_pfns for r in done]
    warnings = [w for r in done for w in r.warnings]
    if not reader.pfns_visible:
        note = ("page frame numbers are hidden from this user (they need CAP_SYS_ADMIN): anonymous pages "
                "shared between processes cannot be counted")
        if reader.method == "read":
            problems.append(note + ", and zero-page mappings cannot be told from anonymous memory "
                            "(this kernel has no PAGEMAP_SCAN)")
        else:
            warnings.append(note)
    else:
        _count_shared_anon(processes, pfns)
    objects = identify_objects(processes, warnings)
    meta = _meta(reader, len(pids), time.perf_counter() - t0, problems, warnings)
    return Snapshot(meta, processes, objects)


def _meta(reader: Reader, requested: int, seconds: float, problems: list[str], warnings: list[str]) -> dict:
    meminfo = read_meminfo()
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "page_size": PAGE_SIZE,
        "method": f"pagemap-{reader.method}",
        "pfns_visible": reader.pfns_visible,
        "meminfo": {k: meminfo[k] for k in ("MemTotal", "PageTables", "SecPageTables", "Shmem", "AnonPages",
                                             "HugePages_Total", "Hugepagesize", "AnonHugePages") if k in meminfo},
        "requested": requested,
        "read_seconds": round(seconds, 3),
        "problems": problems,
        "warnings": warnings,
    }


def _count_shared_anon(processes: list[ProcessSnap], pfns: list[np.ndarray]) -> None:
    """Set ``anon_shared_kb``: anonymous pages whose frame another process of the snapshot also maps
    (copy-on-write sharing after fork)."""
    if not pfns:
        return
    frames, counts = np.unique(np.concatenate(pfns), return_counts=True)
    shared = frames[counts > 1]
    for proc, mine in zip(processes, pfns, strict=True):
        proc.anon_shared_kb = int(np.isin(mine, shared, assume_unique=True).sum()) * PAGE_SIZE // 1024


# --- objects ------------------------------------------------------------------------------------

def identify_objects(processes: list[ProcessSnap], warnings: list[str]) -> list[ObjectSnap]:
    """Give each file-backed VMA its object: one per (device, inode), whatever process maps it."""
    fstypes: dict[str, dict[str, str]] = {}
    index: dict[tuple[str, int], int] = {}
    objects: list[ObjectSnap] = []
    for proc in processes:
        types = fstypes.setdefault(_mount_ns(proc.pid), mount_fstypes(proc.pid))
        for vma in proc.vmas:
            kind = mapping_kind(vma, types)
            if kind in (ANON, SPECIAL):
                vma.kind = kind
                if kind == SPECIAL and vma.path not in _KERNEL_SPECIAL:
                    warnings.append(f"process {proc.pid}: {vma.path or 'a mapping'} at {vma.start:#x} is a "
                                    "device or PFN mapping; it is modelled as anonymous memory")
                continue
            key = (vma.dev, vma.inode)
            if key not in index:
                index[key] = len(objects)
                objects.append(ObjectSnap(vma.dev, vma.inode, vma.path, kind, 0))
            obj = objects[index[key]]
            vma.object, vma.kind = index[key], obj.kind
            obj.size = max(obj.size, vma.offset + vma.end - vma.start)
    for obj in objects:
        unit = HPAGE_SIZE if obj.kind == "hugetlb" else PAGE_SIZE
        obj.size = -(-obj.size // unit) * unit
    return objects


def _mount_ns(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return ""


def mapping_kind(vma: VmaSnap, fstypes: dict[str, str]) -> str:
    flags = vma.flags
    if "ht" in flags:
        return "hugetlb"
    if vma.path in _KERNEL_SPECIAL or flags & {"pf", "io", "mm"} or vma.path.startswith("anon_inode:"):
        return SPECIAL
    if vma.inode == 0:
        return ANON
    fstype = fstypes.get(vma.dev)
    if fstype == "devtmpfs":  # a device node: private /dev/zero is anonymous memory, the rest are devices
        return ANON if vma.path == "/dev/zero" and not vma.shared else SPECIAL
    if fstype in SHMEM_FSTYPES or _SHMEM_PATH.match(vma.path):
        return "shmem"
    if fstype is None and vma.dev.startswith("00:") and vma.path.endswith(" (deleted)"):
        return "shmem"  # a file of a kernel-internal tmpfs mount
    return "file"
