"""A host run in progress: the worker processes, the objects, and what each step measured.

The session owns everything a run creates and :meth:`Session.close` takes all of it down, whatever
happened: it ends every worker (SIGKILL through a pidfd when asking is not enough) and waits until
each is gone, closes the objects and gives back the huge pages.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from ..scenario.patterns import accesses
from . import channel, workspace
from .objects import HostError, HostObjects, meminfo
from .plan import Op, Plan, PlannedStep
from .worker import read_status
from .workspace import CAPACITY, Workspace

ADDR_NO_RANDOMIZE = 0x0040000
REPLY_TIMEOUT_S = 600
GONE_TIMEOUT_S = 30
WORKER_ENV = {
    # rseq off: the kernel's writes to the rseq area would be faults (see measure.py); no heap trimming,
    # so that the interpreter's heap, once grown, keeps its pages (and its RSS stays put); and 8 MiB
    # of heap to spare whenever it grows, so that the heap the worker populates at its start is large
    # enough for the rest of the run (without it, a heap that happened to end near its top grew by a
    # page mid-run, in one of every few runs)
    "GLIBC_TUNABLES": "glibc.pthread.rseq=0:glibc.malloc.trim_threshold=1073741824:glibc.malloc.top_pad=8388608",
    "OPENBLAS_NUM_THREADS": "1",  # a worker must be single-threaded to be forked safely
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@dataclass(eq=False)
class Incarnation:
    """One worker process playing a scenario process (an exec starts a new incarnation)."""

    name: str
    sock: socket.socket
    pid: int
    pidfd: int
    hello: dict[str, Any]  # its hello: pid, threads, status after warming up (interpreter only, if spawned)
    popen: subprocess.Popen | None = None
    base_minflt: int = 0  # faults of earlier incarnations (exec keeps the task's counts)
    base_majflt: int = 0
    interp: dict[str, Any] | None = None  # its interpreter-only status at the end
    killed_by: str | None = None
    alive: bool = True
    last: dict[str, Any] = field(default_factory=dict)  # its last status reply


@dataclass
class StepRecord:
    planned: PlannedStep
    wall_ns: int
    processes: dict[str, tuple[Incarnation, dict[str, Any], bool]]  # name -> (who, status, alive)
    pagetables_kb: int  # /proc/meminfo PageTables
    own_vmpte_kb: int  # this process's own page tables (the backend's), to take out of PageTables
    acted: set[str]  # processes that ran an operation in this step
    signals: list[dict[str, Any]] = field(default_factory=list)  # the fatal accesses made, as the kernel saw them


class Session:
    """Runs a plan.  With ``own_layout`` the kernel places every mapping (:mod:`.worker`'s
    own-layout runs): the workers run without address randomisation, and every address of the plan
    is taken as an offset into the mapping it falls in, which is wherever the kernel put it."""

    def __init__(self, plan: Plan, own_layout: bool = False) -> None:
        self.plan = plan
        self.own_layout = own_layout
        self.placed: dict[str, dict[str, int]] = {}  # own layout: each process's mappings, by handle
        self.live: dict[str, Incarnation] = {}
        self.everyone: list[Incarnation] = []
        self.records: list[StepRecord] = []
        self._signals: list[dict[str, Any]] = []  # the current step's fatal accesses
        self.objects: HostObjects | None = None
        self.workspace_fd = -1
        self.ws: Workspace | None = None
        try:
            self.objects = HostObjects(plan.scenario.objects, plan.hugepages)
            self.workspace_fd = workspace.create()
            self.ws = Workspace(self.workspace_fd)
            self.pagetables_start = pagetables_kb()
        except BaseException:
            self.close()
            raise

    # --- running the plan --------------------------------------------------------------------

    def run(self) -> HostError | None:
        """Run every planned step; returns the error that stopped the run, if one did."""
        for planned in self.plan.steps:
            acted: set[str] = set()
            self._signals = []
            try:
                wall = sum(self._execute(op, acted) for op in planned.ops)
            except HostError as exc:
                step = planned.step
                return HostError(f"{self.plan.scenario.path or '<scenario>'}:{step.line}: step {step.index} "
                                 f"({step.op}) failed on the host: {exc}")
            self.records.append(StepRecord(planned, wall, self._statuses(), pagetables_kb(),
                                           read_status()["vmpte_kb"], acted, self._signals))
        return None

    def _execute(self, op: Op, acted: set[str]) -> int:
        """Do one operation; returns its wall time in ns as measured where it ran."""
        if op.pid is not None:
            acted.add(op.pid)
        if op.kind == "spawn":
            t0 = time.perf_counter_ns()
            self._spawn(op.pid)
            return time.perf_counter_ns() - t0
        if op.kind == "truncate":
            t0 = time.perf_counter_ns()
            self.objects.truncate(op.args["object"], op.args["size"])
            return time.perf_counter_ns() - t0
        proc = self.live[op.pid]
        if self.own_layout:
            op = self._own(op)
        if op.kind == "fork":
            acted.add(op.args["child"])
            self.placed[op.args["child"]] = dict(self.placed.get(op.pid, {}))
            return self._fork(proc, op.args["child"])
        if op.kind == "killed":
            self._signals.append(self._probe(proc, op.args["touch"]))
        if op.kind in ("exit", "killed"):
            return self._end(proc, op.args.get("signal"))
        if op.kind == "exec":
            ns = self._end(proc, None)
            t0 = time.perf_counter_ns()
            new = self._spawn(op.pid)
            new.base_minflt = proc.base_minflt + proc.last["minflt"]
            new.base_majflt = proc.base_majflt + proc.last["majflt"]
            return ns + time.perf_counter_ns() - t0
        if op.kind == "touch":
            return self._touch(proc, op.args)
        reply = self._request(proc, {"op": op.kind, **op.args})
        if self.own_layout and op.kind in ("mmap", "mremap"):
            self.placed.setdefault(op.pid, {})[op.vma] = reply["addr"]
        return reply["ns"]

    def _own(self, op: Op) -> Op:
        """``op`` with the kernel's addresses: a new mapping at the scenario's hint (if any), an
        mremap free to move it, every other address at its offset in the mapping it acts on."""
        args = dict(op.args)
        if op.kind == "mmap":
            args.update(addr=args["hint"], own=True)
            return Op(op.kind, op.pid, args, op.vma, op.vma_base)
        if op.vma is None:
            return op
        base = self.placed[op.pid][op.vma]
        if op.kind == "mremap":
            args.update(addr=base, new_addr=args["new_addr"] if args["fixed"] else 0, own=True)
        elif op.kind == "touch":
            args["start"] += base - op.vma_base
        elif op.kind == "killed":
            args["touch"] = {**args["touch"], "start": args["touch"]["start"] + base - op.vma_base}
        else:
            args["addr"] += base - op.vma_base
        return Op(op.kind, op.pid, args, op.vma, op.vma_base)

    def _touch(self, proc: Incarnation, args: dict[str, Any]) -> int:
        acc = accesses(args["start"], args["length"], args["pattern"], stride=args["stride"],
                       count=args["count"], seed=args["seed"], zipf_s=args["zipf_s"])
        n, start = args["n"], args["start"]
        if n == 0:
            return 0
        if acc.is_progression:
            return self._request(proc, {"op": "touch", "base": start, "n": n, "stride": acc.stride,
                                        "write": args["write"]})["ns"]
        offsets = acc.addrs[:n] - start
        ns = 0
        for lo in range(0, n, CAPACITY):
            chunk = offsets[lo:lo + CAPACITY]
            self.ws.idx[:len(chunk)] = chunk
            ns += self._request(proc, {"op": "touch", "base": start, "n": len(chunk),
                                       "write": args["write"]})["ns"]
        return ns

    def _probe(self, proc: Incarnation, args: dict[str, Any]) -> dict[str, Any]:
        """Make the accesses of a touch from ``args["from"]`` on -- the first is the one the
        simulator kills the process at -- in a traced copy of the process (:mod:`.probe`), and
        return the signal and address the kernel reported."""
        acc = accesses(args["start"], args["length"], args["pattern"], stride=args["stride"],
                       count=args["count"], seed=args["seed"], zipf_s=args["zipf_s"])
        first, start = args["from"], args["start"]
        request: dict[str, Any] = {"op": "probe", "write": args["write"]}
        if acc.is_progression:
            request.update(base=start + first * acc.stride, n=args["n"] - first, stride=acc.stride)
        else:
            chunk = acc.addrs[first:first + CAPACITY] - start
            self.ws.idx[:len(chunk)] = chunk
            request.update(base=start, n=len(chunk))
        reply = self._request(proc, request)
        return {"pid": proc.name, "signal": reply["signal"],
                "addr": None if reply["addr"] is None else hex(reply["addr"])}

    # --- processes ----------------------------------------------------------------------------

    def _spawn(self, name: str) -> Incarnation:
        ours, theirs = channel.pair()
        objects = ",".join(f"{n}={fd}" for n, fd in self.objects.fds.items())
        env = dict(os.environ)
        for key, value in WORKER_ENV.items():
            env[key] = f"{env[key]}:{value}" if key == "GLIBC_TUNABLES" and env.get(key) else value
        popen = subprocess.Popen(
            [sys.executable, "-m", "ptshare.host.worker", str(theirs.fileno()), str(self.workspace_fd), objects,
             *(["own"] if self.own_layout else [])],
            pass_fds=(theirs.fileno(), self.workspace_fd, *self.objects.fds.values()), env=env,
            stdin=subprocess.DEVNULL, preexec_fn=_no_randomize if self.own_layout else None)
        self.placed[name] = {}
        theirs.close()
        return self._welcome(name, ours, popen.pid, popen)

    def _fork(self, parent: Incarnation, child: str) -> int:
        ours, theirs = channel.pair()
        try:
            reply = self._request(parent, {"op": "fork"}, (theirs.fileno(),))
        finally:
            theirs.close()
        self._welcome(child, ours, reply["child"], None)
        return reply["ns"]

    def _welcome(self, name: str, sock: socket.socket, pid: int, popen: subprocess.Popen | None) -> Incarnation:
        """Take on the new worker ``pid`` as ``name`` (from now on :meth:`close` ends it), and wait
        for its hello."""
        inc = Incarnation(name, sock, pid, os.pidfd_open(pid), {}, popen)
        self.live[name] = inc
        self.everyone.append(inc)
        sock.settimeout(REPLY_TIMEOUT_S)
        try:
            hello, _ = channel.recv(sock)
        except OSError as exc:
            raise HostError(f"the worker for {name!r} did not start: {exc}") from None
        if hello is None:
            raise HostError(f"the worker for {name!r} exited while starting (see its messages above)")
        inc.hello = hello
        if hello["threads"] != 1:
            raise HostError(f"the worker for {name!r} runs {hello['threads']} threads; it must run one to be forked "
                            "safely (is a numerical library starting threads of its own?)")
        return inc

    def _end(self, proc: Incarnation, killed_by: str | None) -> int:
        """The process exits: its last counters are kept, then it reports its interpreter's part."""
        proc.last = self._request(proc, {"op": "status"})
        reply = self._request(proc, {"op": "finish"})
        proc.interp = reply["interp"]
        proc.killed_by = killed_by
        self._gone(proc)
        return reply["ns"]

    def _gone(self, proc: Incarnation) -> None:
        """Wait until ``proc`` has exited; kill it if it does not."""
        if not select.select([proc.pidfd], [], [], GONE_TIMEOUT_S)[0]:
            signal.pidfd_send_signal(proc.pidfd, signal.SIGKILL)
            select.select([proc.pidfd], [], [], GONE_TIMEOUT_S)
        if proc.popen is not None:
            proc.popen.wait()
        proc.alive = False
        proc.sock.close()
        os.close(proc.pidfd)
        self.live.pop(proc.name, None)

    def _request(self, proc: Incarnation, message: dict[str, Any], fds: tuple[int, ...] = ()) -> dict[str, Any]:
        try:
            channel.send(proc.sock, message, fds)
            reply, _ = channel.recv(proc.sock)
        except OSError as exc:
            raise HostError(f"lost the worker of {proc.name!r}: {exc}") from None
        if reply is None:
            raise HostError(f"the worker of {proc.name!r} died (see its messages above)")
        if "error" in reply:
            raise HostError(reply["error"])
        return reply

    def _statuses(self) -> dict[str, tuple[Incarnation, dict[str, Any], bool]]:
        out = {}
        for inc in self.everyone:
            if inc.alive:
                inc.last = self._request(inc, {"op": "status"})
            out[inc.name] = (inc, inc.last, inc.alive)
        return out

    # --- the end ------------------------------------------------------------------------------

    def finish(self) -> None:
        """Every live worker reports its interpreter's part and exits."""
        for proc in list(self.live.values()):
            self._end(proc, None)
            proc.killed_by = None

    def close(self) -> None:
        """Take everything down, whatever state the run is in (idempotent)."""
        for proc in list(self.live.values()):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(proc.pidfd, signal.SIGKILL)
            self._gone(proc)
        if self.ws is not None:
            self.ws.close()
            self.ws = None
        if self.workspace_fd >= 0:
            os.close(self.workspace_fd)
            self.workspace_fd = -1
        if self.objects is not None:
            self.objects.close()


def _no_randomize() -> None:
    """personality(ADDR_NO_RANDOMIZE) in a worker about to start: every worker of an own-layout
    run then has the same layout, and the same floor."""
    libc = ctypes.CDLL(None, use_errno=True)
    current = libc.personality(0xFFFFFFFF)
    if libc.personality(current | ADDR_NO_RANDOMIZE) < 0:
        raise OSError(ctypes.get_errno(), "personality(ADDR_NO_RANDOMIZE)")


def pagetables_kb() -> int:
    """/proc/meminfo PageTables, with every CPU's pending counts folded in first (root only)."""
    try:
        with open("/proc/sys/vm/stat_refresh", "w") as f:
            f.write("1")
    except OSError:
        pass
    return meminfo()["PageTables"]
