"""A scenario process on the real kernel: a quiet Python interpreter that makes one scenario
process's system calls and memory accesses when the backend asks, and counts what they cost.

Run as ``python -m ptshare.host.worker SOCKET WORKSPACE OBJECTS`` (descriptor numbers, and
``name=fd,...`` for the backing objects); a ``fork`` request makes a real child that carries on as
a worker of its own, on a socket of its own.

How the interpreter's own costs are kept out of the figures:

* **Faults and time.**  Every operation is a measured call (:mod:`.measure`): machine code takes
  the counts just before and just after it and runs nothing else in between, so the faults it
  reports are the scenario's.  Scenario memory is touched by nothing else, so the sum over the
  calls is the process's count.
* **Page tables and RSS.**  ``/proc/self/status`` counts the interpreter too.  Every scenario
  mapping lies in :data:`WINDOW`, PGD entries the interpreter never uses, so when a worker ends it
  unmaps the whole window -- which frees every page-table page of the scenario -- and reads its
  status again: that is the interpreter's part, which the backend subtracts from every earlier
  reading.  This is exact when the interpreter's part did not change during the run, and the
  worker is made so: no garbage collector, access lists passed through the workspace rather than
  allocated, every code path run once at start (and again in a forked child, which must fault the
  interpreter's file-backed pages back in), and then every page of the interpreter's own memory --
  heap, allocator arenas, stack, the code of every library -- faulted in
  (``populate_own_memory``), so that a new object, a deeper call or a code path not yet run lands
  on a page already counted.  The backend checks it (``backend._drift_notes``).
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import sys
from typing import Any

from . import channel, syscalls
from .layout import maps_layout
from .measure import SYS_MADVISE, SYS_MMAP, SYS_MPROTECT, SYS_MREMAP, SYS_MUNMAP, Cost, Meter
from .probe import fatal_access
from .workspace import Workspace

WINDOW = (0x600000000000, 0x700000000000)  # where every scenario mapping goes: PGD entries 192-223
_SPARE = WINDOW[1]  # an address no scenario mapping uses: the target of warm-up calls
# A mapping larger than this is left alone: the interpreter's allocator works in 1 MiB arenas and a
# heap of a few MiB, and what is larger (a numerical library's 32 MiB buffer, its 19 MiB of code)
# the worker never uses, and would cost every fork a copy of its tables.  Should the interpreter
# touch a new page of one, the backend's drift check names the move.
POPULATE_MAX = 16 << 20
_ADVICE = {"dontneed": syscalls.MADV_DONTNEED, "hugepage": syscalls.MADV_HUGEPAGE,
           "nohugepage": syscalls.MADV_NOHUGEPAGE}
# Own-layout runs (``validate --own-layout``): the kernel places the scenario's mappings, below
# everything the interpreter maps.  The worker takes every gap from the 512 GiB boundary below its
# lowest mapping up to just under its stack (:func:`reserve_above`), so that the highest free
# range, where the kernel's top-down search starts, ends at that boundary -- the worker's
# ``floor`` -- and the scenario's page tables share no table at any level with the interpreter's.
FLOOR_ALIGN = 512 << 30
HPAGE = 2 << 20
STACK_ROOM = 64 << 20  # left free below the stack, for it to grow into
_STATUS = {b"VmPTE": "vmpte_kb", b"VmRSS": "rss_kb", b"RssAnon": "rss_anon_kb", b"RssFile": "rss_file_kb",
           b"RssShmem": "rss_shmem_kb", b"HugetlbPages": "hugetlb_kb", b"AnonHugePages": "anon_huge_kb"}


def read_status() -> dict[str, int]:
    """This process's page-table and RSS counters from /proc/self/status, and the anonymous memory
    huge PMDs map from /proc/self/smaps_rollup, in kB."""
    out = {}
    for path in ("/proc/self/status", "/proc/self/smaps_rollup"):
        with open(path, "rb") as f:
            text = f.read()
        for line in text.split(b"\n"):
            key, _, value = line.partition(b":")
            if key in _STATUS:
                out[_STATUS[key]] = int(value.split()[0])
    return out


class Worker:
    """One scenario process.  ``handle`` answers one request; ``serve`` loops until end of file."""

    def __init__(self, sock: socket.socket, workspace_fd: int, objects: dict[str, int]) -> None:
        self.sock = sock
        self.ws = Workspace(workspace_fd)
        self.objects = objects
        self.meter = Meter()
        self.receiver = channel.Receiver()
        self.minflt = 0
        self.majflt = 0
        self.own = False  # the kernel chooses where mappings go (own-layout runs)
        self.region = WINDOW  # where the scenario's mappings are

    # --- the request loop --------------------------------------------------------------------

    def serve(self) -> None:
        while True:
            try:
                message, fds = self.receiver.recv(self.sock)
            except OSError:  # the backend went away (reset: with our last message unread)
                message, fds = None, []
            if message is None:
                os._exit(0)
            try:
                reply = self.handle(message, fds)
            except OSError as exc:
                reply = {"error": str(exc)}
            if reply is not None:
                self._send(reply)
            if message["op"] == "finish":
                os._exit(0)

    def handle(self, m: dict[str, Any], fds: list[int]) -> dict[str, Any] | None:
        op = m["op"]
        if op == "status":
            return {"raw": read_status(), "minflt": self.minflt, "majflt": self.majflt,
                    "layout": maps_layout(*self.region)}
        if op == "fork":
            return self.fork(socket.socket(fileno=fds[0]))
        if op == "finish":
            return self.finish()
        if op == "probe":
            return self.probe(m)
        ops = {"mmap": self.mmap, "munmap": self.munmap, "mprotect": self.mprotect, "madvise": self.madvise,
               "mremap": self.mremap, "touch": self.touch}
        if op not in ops:
            return {"error": f"unknown request {op!r}"}
        got, cost = ops[op](m)
        self.minflt += cost.minflt
        self.majflt += cost.majflt
        return {"minflt": cost.minflt, "majflt": cost.majflt, "ns": cost.ns, "addr": got}

    # --- the requests: each is one or more measured calls --------------------------------------

    def mmap(self, m: dict[str, Any]) -> tuple[int, Cost]:
        """At ``addr`` (MAP_FIXED_NOREPLACE: the simulator's choice), or, in an own-layout run,
        where the kernel puts it (``addr`` is then the scenario's hint, or 0)."""
        addr, length = m["addr"], m["length"]
        fd = -1 if m["object"] is None else self.objects[m["object"]]
        flags = (syscalls.MAP_SHARED if m["shared"] else syscalls.MAP_PRIVATE)
        cost = Cost()
        if m["fixed"]:
            flags |= syscalls.MAP_FIXED
        elif not m.get("own"):
            flags |= syscalls.MAP_FIXED_NOREPLACE
        elif m.get("align"):  # as System.mmap(align=) does it: reserve, unmap, map at the aligned start
            addr, cost = self._aligned_start(addr, length, m["align"], m["kind"] == "hugetlb")
            flags |= syscalls.MAP_FIXED_NOREPLACE
        if fd < 0:
            flags |= syscalls.MAP_ANONYMOUS
        got, more = self.meter.syscall(SYS_MMAP, addr, length, syscalls.PROTS[m["prot"]], flags, fd, m["offset"])
        cost += more
        if got != addr and not m.get("own"):
            raise OSError(0, f"mmap placed the mapping at {got:#x}, not at {addr:#x}")
        if m["kind"] != "hugetlb":  # THP per mapping, as the scenario's mode gives it (host/thp.py)
            advice = syscalls.MADV_HUGEPAGE if m.get("hugepage") else syscalls.MADV_NOHUGEPAGE
            cost += self.meter.syscall(SYS_MADVISE, got, length, advice)[1]
        if m["kind"] == "file":  # no read-ahead: the model reads in the faulting page only
            cost += self.meter.syscall(SYS_MADVISE, got, length, syscalls.MADV_RANDOM)[1]
        return got, cost

    def _aligned_start(self, hint: int, length: int, align: int, hugetlb: bool) -> tuple[int, Cost]:
        """Where the kernel puts a reservation of ``length + align`` bytes, rounded up to ``align``
        (at least the huge page size for hugetlb); the reservation is unmapped again."""
        align = max(align, HPAGE) if hugetlb else align
        flags = syscalls.MAP_PRIVATE | syscalls.MAP_ANONYMOUS | syscalls.MAP_NORESERVE
        got, cost = self.meter.syscall(SYS_MMAP, hint, length + align, syscalls.PROT_NONE, flags, -1, 0)
        cost += self.meter.syscall(SYS_MUNMAP, got, length + align)[1]
        return -(-got // align) * align, cost

    def munmap(self, m: dict[str, Any]) -> tuple[int, Cost]:
        return 0, self.meter.syscall(SYS_MUNMAP, m["addr"], m["length"])[1]

    def mprotect(self, m: dict[str, Any]) -> tuple[int, Cost]:
        return 0, self.meter.syscall(SYS_MPROTECT, m["addr"], m["length"], syscalls.PROTS[m["prot"]])[1]

    def madvise(self, m: dict[str, Any]) -> tuple[int, Cost]:
        advice = _ADVICE[m.get("advice", "dontneed")]
        return 0, self.meter.syscall(SYS_MADVISE, m["addr"], m["length"], advice)[1]

    def mremap(self, m: dict[str, Any]) -> tuple[int, Cost]:
        """To ``new_addr`` (the simulator's choice), or, in an own-layout run, with MREMAP_MAYMOVE
        where the kernel chooses (MREMAP_FIXED only for an address the scenario gives)."""
        addr, target = m["addr"], m["new_addr"]
        if m.get("own"):
            flags = syscalls.MREMAP_MAYMOVE | (syscalls.MREMAP_FIXED if m["fixed"] else 0)
        else:
            flags = 0 if target == addr else syscalls.MREMAP_MAYMOVE | syscalls.MREMAP_FIXED
        got, cost = self.meter.syscall(SYS_MREMAP, addr, m["old"], m["new"], flags, target)
        if got != target and not m.get("own"):
            raise OSError(0, f"mremap moved the mapping to {got:#x}, not to {target:#x}")
        return got, cost

    def touch(self, m: dict[str, Any]) -> tuple[int, Cost]:
        """Read or write one byte at each access: ``n`` accesses ``stride`` bytes apart from ``base``,
        or at the ``n`` offsets the backend wrote into the workspace."""
        if "stride" in m:
            return 0, self.meter.touch(m["base"], m["n"], m["write"], stride=m["stride"])
        return 0, self.meter.touch(m["base"], m["n"], m["write"], offsets=m.get("offsets", self.ws.idx_addr))

    def probe(self, m: dict[str, Any]) -> dict[str, Any]:
        """Make a touch's accesses in a traced copy of this process (:mod:`.probe`): the signal
        and address the first bad one raises, if any; this process's counts do not change."""
        sig, addr = fatal_access(lambda: self.touch(m))
        return {"signal": sig, "addr": addr}

    # --- processes ----------------------------------------------------------------------------

    def fork(self, child_sock: socket.socket | None) -> dict[str, Any] | None:
        """A real fork.  The child takes ``child_sock`` as its channel, warms up and says hello;
        with no socket (a warm-up fork) it exits at once."""
        pid, cost = self.meter.fork()
        if pid == 0:
            if child_sock is None:
                os._exit(0)
            self.meter.close()  # its data page is the parent's, which is still reading its counts
            self.meter = Meter()
            self.sock.close()
            self.sock = child_sock
            self.minflt = self.majflt = 0  # the kernel starts a child's counts at 0
            self.start()
            return None
        if child_sock is None:
            _wait_gone(pid)
            return None
        child_sock.close()
        self.minflt += cost.minflt
        self.majflt += cost.majflt
        return {"minflt": cost.minflt, "majflt": cost.majflt, "ns": cost.ns, "child": pid}

    def finish(self) -> dict[str, Any]:
        """Unmap the whole window (the scenario's mappings and every table under them) and report
        what is left: the interpreter's own part.  The worker exits after replying."""
        _, cost = self.meter.syscall(SYS_MUNMAP, self.region[0], self.region[1] - self.region[0])
        return {"interp": read_status(), "ns": cost.ns}

    def start(self, spawned: bool = False) -> None:
        """Warm up, fault in the interpreter's own memory, then say hello with this process's pid
        and its interpreter-only status."""
        if self.own and spawned:  # a forked worker has its parent's reservations
            self.region = (WINDOW[0], reserve_above())
        self.warm_up()  # after the reservations: the maps file a status reads is longer with them
        populate_own_memory(write=spawned, skip=self.region)
        threads = len(os.listdir("/proc/self/task"))
        self._send({"hello": os.getpid(), "interp": read_status(), "threads": threads, "floor": self.region[1]})

    def _send(self, message: dict[str, Any]) -> None:
        try:
            channel.send(self.sock, message)
        except OSError:  # the backend went away: so does this worker
            os._exit(0)

    def warm_up(self) -> None:
        """Run every code path once (twice: the second run finds everything in place), on targets
        outside the window, so that the interpreter faults and allocates nothing new later."""
        saved = self.minflt, self.majflt
        self.ws.fault_in()
        self.meter.fault_in()
        spare = {"addr": _SPARE, "length": 4096}
        for _ in range(2):
            read_status()
            for write in (False, True):
                self.handle({"op": "touch", "base": self.ws.scratch, "n": 1, "stride": 4096, "write": write}, [])
                self.handle({"op": "touch", "base": self.ws.scratch, "n": 1, "write": write,
                             "offsets": self.ws.zero_offsets}, [])
            self.handle({"op": "mmap", **spare, "prot": "r", "object": None, "shared": False, "fixed": False,
                         "kind": "file", "offset": 0}, [])
            self.handle({"op": "mprotect", **spare, "prot": "rw"}, [])
            self.handle({"op": "madvise", **spare}, [])
            self.handle({"op": "mremap", "addr": _SPARE, "old": 4096, "new": 4096, "new_addr": _SPARE}, [])
            self.handle({"op": "munmap", **spare}, [])
            self.handle({"op": "probe", "base": self.ws.scratch, "n": 1, "stride": 4096, "write": False}, [])
            self.fork(None)
        self.minflt, self.majflt = saved


def populate_own_memory(write: bool, skip: tuple[int, int] = WINDOW) -> None:
    """Fault in every page of this process's mappings outside ``skip`` (the scenario's region, the
    window unless the kernel places the mappings): its writable private
    memory for writing (``write``: a forked worker's is present already, as its parent's), and
    the rest, the interpreter's and its libraries' code and read-only data, for reading.

    Which pages the interpreter touches next depends on where its allocator and its stack happen to
    be (the environment's size moves the stack, for one), and which code pages a later call needs
    that fault-around has not mapped yet; with every page already present, no later allocation or
    call changes its RSS or page tables."""
    with open("/proc/self/maps", "rb") as f:
        lines = f.read().split(b"\n")
    for line in lines:
        fields = line.split()
        if len(fields) < 2 or fields[1][:1] != b"r":
            continue
        start, end = (int(x, 16) for x in fields[0].split(b"-"))
        if (skip[0] < end and start < skip[1]) or end - start > POPULATE_MAX:
            continue
        private_writable = fields[1][1:2] == b"w" and fields[1][3:4] == b"p"
        advice = syscalls.MADV_POPULATE_WRITE if write and private_writable else syscalls.MADV_POPULATE_READ
        with contextlib.suppress(OSError):  # a mapping the kernel will not populate ([vvar] and the like)
            syscalls.madvise(start, end - start, advice)


def reserve_above() -> int:
    """Take every free range from the 512 GiB boundary below this process's lowest mapping above
    the window up to :data:`STACK_ROOM` below its stack, with inaccessible reservations that hold
    no memory and no page table; returns that boundary (the worker's floor).

    Reading the layout allocates, and the interpreter's allocator may map an arena in a free range
    before it is taken: the layout is then read again and what is still free is taken."""
    with open("/proc/self/maps", "rb") as f:
        stack = next(int(line.split(b"-")[0], 16) for line in f.read().split(b"\n") if line.endswith(b"[stack]"))
    top = stack - STACK_ROOM
    for _attempt in range(8):
        maps = maps_layout(WINDOW[1], 1 << 47)
        floor = maps[0][0] & ~(FLOOR_ALIGN - 1)
        below = maps_layout(WINDOW[0], floor)
        if below:
            raise OSError(0, f"the interpreter maps {below[0][0]:#x}-{below[0][1]:#x}, below its floor {floor:#x}")
        try:
            _reserve_gaps(maps, floor, top)
            return floor
        except FileExistsError:
            continue
    raise OSError(0, "the interpreter kept mapping memory while its free ranges were being reserved")


def _reserve_gaps(maps: list, floor: int, top: int) -> None:
    prev = floor
    for start, end, _perms in [*maps, [top, top, ""]]:
        if start > prev and prev < top:
            syscalls.mmap(prev, min(start, top) - prev, syscalls.PROT_NONE, syscalls.MAP_PRIVATE
                          | syscalls.MAP_ANONYMOUS | syscalls.MAP_NORESERVE | syscalls.MAP_FIXED_NOREPLACE)
        prev = max(prev, end)


def _wait_gone(pid: int) -> None:
    """Wait until process ``pid`` has exited (it is auto-reaped: SIGCHLD is ignored)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        select.select([fd], [], [])
    finally:
        os.close(fd)


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the backend decides when a worker ends
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    gc.disable()
    sock = socket.socket(fileno=int(argv[0]))
    objects = {}
    for item in filter(None, argv[2].split(",")):
        name, _, fd = item.rpartition("=")
        objects[name] = int(fd)
    worker = Worker(sock, int(argv[1]), objects)
    worker.own = argv[3:] == ["own"]
    worker.start(spawned=True)
    worker.serve()


if __name__ == "__main__":
    main(sys.argv[1:])
