"""Planning a host run: the scenario runs first on the simulator (policy ``linux``, no address
randomisation, ``mmap_base`` at the top of the host window, or lower by as much as the scenario's
mappings grow above it), which says where every mapping goes,
which accesses a touch makes and where a process is killed; the host then puts every mapping at
exactly that address, so that both backends build page tables for the same addresses and their
counts can be compared entry for entry.  The plan also gives what the safety limits need: the
memory the scenario uses at its peak, its huge pages, and how many processes it makes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..cost import CostModel, load_profile
from ..errors import ScenarioError
from ..mm.frames import PG_ANON, PG_HUGE
from ..scenario.model import Scenario, Step
from ..scenario.patterns import accesses
from ..scenario.run import Runner, create_objects, step_error
from ..system import SimulationError, System
from .thp import advice_on_host, mmap_hugepage
from .worker import WINDOW

HOST_MMAP_BASE = WINDOW[1]
# Where a host run's frames come from: the backend writes and frees as much memory as the run needs
# just before it (guest.pre_touch), so the run's pages come back from the per-CPU free lists in the
# reverse order of that freeing -- measured with the fork probe (layout=recycled, 64 and 256 MiB):
# 0.40 to 0.47 of the frames next to the previous page's.  No pool in no order, runs of 2.
HOST_RUN_FRAMES = {"scattered": 0, "frames_in_order": 2}
HPAGE = 2 << 20
# mmap_base moves down in steps of a PUD table's span (512 GiB), so that every mapping keeps its
# place inside its page tables at every level, and the counts stay those of the scenario as written
ROOM_STEP = 512 << 30


@dataclass
class Op:
    """One concrete operation for the host: ``kind`` and its arguments, addresses resolved."""

    kind: str
    pid: str | None
    args: dict[str, Any] = field(default_factory=dict)
    vma: str | None = None  # the mapping it acts on, by handle
    vma_base: int = 0  # where the simulator had that mapping when the operation was made


@dataclass
class PlannedStep:
    step: Step
    ops: list[Op]
    est_ns: float


@dataclass
class Plan:
    scenario: Scenario
    steps: list[PlannedStep]
    error: ScenarioError | None
    peak_kb: int  # data and page tables at the simulator's peak
    hugepages: int  # 2 MiB pages to reserve
    spawned: int  # interpreters started (spawn and exec)
    forked: int
    uses_thp: bool = False  # some mapping gets MADV_HUGEPAGE
    highest: int = 0  # the highest end any mapping reached


def host_scenario(scenario: Scenario) -> Scenario:
    """The scenario with the layout the host uses: ``mmap_base`` at the top of the window (or the
    scenario's own, when it lies inside), no randomisation, and frames placed as a host run gets
    them (:data:`HOST_RUN_FRAMES`).  The simulator side of a comparison runs this too."""
    base = scenario.machine.mmap_base
    if base is None:
        base = HOST_MMAP_BASE
    elif not WINDOW[0] < base <= WINDOW[1]:
        raise ScenarioError(f"[machine] mmap_base = {base:#x} is outside the range the host backend maps "
                            f"scenario memory in ({WINDOW[0]:#x} to {WINDOW[1]:#x}); remove it or choose one "
                            "inside", scenario.path)
    if scenario.machine.levels != 4:
        raise ScenarioError("this host has 4-level page tables; remove [machine] levels = 5 to run it here",
                            scenario.path)
    for obj in scenario.objects:
        if obj.kind == "mshare":
            raise ScenarioError(f"object {obj.name!r}: this host's kernel has no msharefs (mshare is a patch series "
                                "that was never merged); run the scenario on the simulator", scenario.path, obj.line)
    machine = dataclasses.replace(scenario.machine, mmap_base=base, aslr_bits=0, **HOST_RUN_FRAMES)
    return dataclasses.replace(scenario, machine=machine)


def make_plan(scenario: Scenario, cost: CostModel | None = None) -> Plan:
    """Run ``scenario`` on the simulator and record what the host must do, step by step.

    Without a ``[machine] mmap_base`` of its own, a scenario whose mappings reach above the window
    (the topmost one grown in place by mremap, as Linux lets it) is planned again with
    ``mmap_base`` that much lower (:func:`room_above`), so that every growth the simulator allows
    fits on the host too.  ``plan.scenario`` has the ``mmap_base`` the host uses."""
    cost = cost or load_profile()
    placed = host_scenario(scenario)
    if scenario.machine.mmap_base is not None:
        return _make_plan(placed, cost, grows=False)
    plan = _make_plan(placed, cost, grows=True)
    room = room_above(plan.highest)
    if room:
        plan = _make_plan(_with_base(placed, WINDOW[1] - room), cost, grows=False)
    return plan


def room_above(highest: int) -> int:
    """How far below the window's top ``mmap_base`` must be for mappings that reach ``highest``."""
    if highest <= WINDOW[1]:
        return 0
    return -(-(highest - WINDOW[1]) // ROOM_STEP) * ROOM_STEP


def _with_base(scenario: Scenario, base: int) -> Scenario:
    return dataclasses.replace(scenario, machine=dataclasses.replace(scenario.machine, mmap_base=base))


def _make_plan(scenario: Scenario, cost: CostModel, grows: bool) -> Plan:
    m = scenario.machine
    system = System("linux", memory=m.memory, cpus=m.cpus, aslr_bits=0, seed=m.seed, mmap_base=m.mmap_base)
    create_objects(scenario, system)
    planner = _Planner(scenario, system, grows)
    steps: list[PlannedStep] = []
    error = None
    for step in scenario.steps:
        before = system.k.events.snapshot()
        try:
            ops = planner.step(step)
        except (SimulationError, MemoryError) as exc:
            error = step_error(scenario, step, exc)
            break
        except ScenarioError as exc:
            error = exc.located(scenario.path, step.line)
            break
        steps.append(PlannedStep(step, ops, cost.estimate(system.k.events.snapshot() - before)))
    private_huge = sum(op.args["length"] for s in steps for op in s.ops
                       if op.kind == "mmap" and op.args["kind"] == "hugetlb" and not op.args["shared"])
    shared_huge = sum(o.size for o in scenario.objects if o.kind == "hugetlb")
    hugepages = -(-(shared_huge + private_huge) // HPAGE) + planner.peak_anon_huge
    return Plan(scenario, steps, error, system.k.frames.peak_units * 4, hugepages if shared_huge or private_huge
                else 0, planner.spawned, planner.forked, planner.uses_thp, planner.highest)


class _Planner:
    """Runs steps on the simulator, turning each concrete one into host operations."""

    def __init__(self, scenario: Scenario, system: System, grows: bool) -> None:
        self.scenario = scenario
        self.system = system
        self.grows = grows  # mappings may reach above the window: the plan is made again lower
        self.highest = 0
        self.runner = Runner(scenario, system)
        self.kinds = {o.name: o.kind for o in scenario.objects}
        self.spawned = 0
        self.forked = 0
        self.peak_anon_huge = 0
        self.uses_thp = False
        self._private_huge = any(s.op == "mmap" and self.kinds.get(s.fields.get("object")) == "hugetlb"
                                 and not s.fields.get("shared", False) for s in scenario.steps)

    def step(self, step: Step) -> list[Op]:
        ops: list[Op] = []
        for fields in step.expand():
            ops.extend(self._concrete(step, fields))
            if self._private_huge:
                frames = self.system.k.frames
                flags = frames.flags[frames.used_pfns()]
                anon_huge = int(np.count_nonzero((flags & (PG_HUGE | PG_ANON)) == (PG_HUGE | PG_ANON)))
                self.peak_anon_huge = max(self.peak_anon_huge, anon_huge)
        return ops

    def _concrete(self, step: Step, fields: dict[str, Any]) -> list[Op]:
        op, pid = step.op, fields.get("pid")
        handles = self.runner.handles
        vma = fields.get("vma")
        if op in ("munmap", "mprotect", "madvise", "touch", "mremap"):
            base, size = handles[pid][vma]
            offset = fields.get("offset", 0)
            length = fields.get("length", size - offset)
        touch = None
        if op == "touch":
            touch = dict(start=base + offset, length=length, pattern=fields.get("pattern", "sequential"),
                         stride=fields.get("stride", 4096), count=fields.get("count"), seed=fields.get("seed", 0),
                         zipf_s=fields.get("zipf_s", 1.0))
        signal = self.runner.execute(step, fields)
        if op == "spawn" or op == "exec":
            self.spawned += 1
            return [Op(op, pid)]
        if op == "fork":
            self.forked += 1
            return [Op(op, pid, {"child": fields["child"]})]
        if op == "exit":
            return [Op(op, pid)]
        if op == "truncate":
            return [Op(op, None, {"object": fields["object"], "size": fields["size"]})]
        if op == "mmap":
            addr, length = handles[pid][fields["vma"]]
            self._check_window(addr, length)
            obj = fields.get("object")
            huge = mmap_hugepage(self.scenario.machine.thp, obj is None and not fields.get("shared", False))
            self.uses_thp |= huge
            return [Op(op, pid, {"addr": addr, "length": length, "prot": fields.get("prot", "rw"),
                                 "shared": fields.get("shared", False), "fixed": fields.get("fixed", False),
                                 "object": obj, "offset": fields.get("offset", 0), "hint": fields.get("addr", 0),
                                 "align": fields.get("align", 0),
                                 "kind": "anon" if obj is None else self.kinds[obj], "hugepage": huge}, vma, addr)]
        if op == "mremap":
            new, new_size = handles[pid][fields["vma"]]
            self._check_window(new, new_size)
            return [Op(op, pid, {"addr": base, "old": size, "new": new_size, "new_addr": new,
                                 "fixed": fields.get("addr") is not None}, vma, base)]
        if op in ("munmap", "mprotect", "madvise"):
            args = {"addr": base + offset, "length": length}
            if op == "mprotect":
                args["prot"] = fields["prot"]
            if op == "madvise":
                args["advice"] = advice_on_host(self.scenario.machine.thp, fields.get("advice", "dontneed"))
                self.uses_thp |= args["advice"] == "hugepage"
            return [Op(op, pid, args, vma, base)]
        assert touch is not None
        acc = accesses(**touch)
        done = len(acc)
        if signal is not None:
            done = _index_of(acc, signal.addr)
        write = fields.get("access", "read") == "write"
        ops = [Op("touch", pid, {**touch, "write": write, "n": done}, vma, base)]
        if signal is not None:  # the rest of the touch, from the access that kills it, is made in a probe
            ops.append(Op("killed", pid, {"signal": signal.signal, "touch": {**touch, "write": write, "from": done,
                                                                               "n": len(acc)}}, vma, base))
        return ops

    def _check_window(self, addr: int, length: int) -> None:
        self.highest = max(self.highest, addr + length)
        if self.grows and WINDOW[0] <= addr:
            return
        if not (WINDOW[0] <= addr and addr + length <= WINDOW[1]):
            raise ScenarioError(f"the mapping at {addr:#x}-{addr + length:#x} is outside the range the host backend "
                                f"maps scenario memory in ({WINDOW[0]:#x} to {WINDOW[1]:#x}), kept clear of the "
                                "interpreter's own mappings; remove its addr or choose one inside")


def _index_of(acc, addr: int) -> int:
    """Position of the first access to ``addr`` (the one the simulator killed the process at)."""
    if acc.is_progression:
        return (addr - acc.start) // acc.stride
    return int(np.flatnonzero(acc.addrs == addr)[0])
