"""Running a scenario on the simulator, and the results in the JSON contract of DESIGN §6."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..cost import CostModel, load_profile
from ..errors import ScenarioError
from ..system import Signal, SimulationError, System
from ..units import format_size
from .model import Scenario, Step
from .patterns import accesses

SCHEMA = "ptshare.run/1"


@dataclass
class StepResult:
    index: int
    op: str
    pid: str | None
    repeat: int
    line: int | None
    processes: dict[str, dict]
    system: dict[str, Any]
    est_ns: float
    wall_ns: int
    signals: list[dict] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)
    est_ns_background: float = 0.0
    events_background: dict[str, int] = field(default_factory=dict)
    translation: dict[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "index": self.index,
            "op": self.op,
            "pid": self.pid,
            "processes": self.processes,
            "system": self.system,
            "est_ns": round(self.est_ns),
            "wall_ns": self.wall_ns,
            "repeat": self.repeat,
            "line": self.line,
            "events": self.events,
        }
        if self.est_ns_background:
            out["est_ns_background"] = round(self.est_ns_background)
            out["events_background"] = self.events_background
        if self.signals:
            out["signals"] = self.signals
        if self.translation is not None:
            out["translation"] = self.translation
        return out


@dataclass
class RunResult:
    scenario: str
    policy: str
    backend: str
    steps: list[StepResult]
    profile: str
    wall_ns: int
    events: dict[str, int]
    complete: bool = True
    error: str | None = None

    @property
    def final(self) -> StepResult | None:
        return self.steps[-1] if self.steps else None

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "scenario": self.scenario,
            "policy": self.policy,
            "backend": self.backend,
            "steps": [s.to_json() for s in self.steps],
            "final": self.final.to_json() if self.final else None,
            "cost_profile": self.profile,
            "wall_ns": self.wall_ns,
            "events": self.events,
            "complete": self.complete,
            **({"error": self.error} if self.error else {}),
        }


class Runner:
    """Executes a scenario's steps on one :class:`System`, keeping each process's mapping handles."""

    def __init__(self, scenario: Scenario, system: System) -> None:
        self.scenario = scenario
        self.sys = system
        self.handles: dict[str, dict[str, list[int]]] = {}

    def execute(self, step: Step, fields: dict[str, Any]) -> Signal | None:
        op = step.op
        pid = fields.get("pid")
        s = self.sys
        if op == "spawn":
            s.spawn(pid)
            self.handles[pid] = {}
        elif op == "fork":
            s.fork(pid, fields["child"])
            self.handles[fields["child"]] = {k: list(v) for k, v in self.handles[pid].items()}
        elif op == "exec":
            s.exec(pid)
            self.handles[pid] = {}
        elif op == "exit":
            s.exit(pid)
        elif op == "mmap":
            obj = fields.get("object")
            offset = fields.get("offset", 0)
            size = fields.get("size")
            if size is None:  # the whole object, or the whole region of an mshare object
                size = (s.object(obj).region or s.object(obj).size) - offset
            addr = s.mmap(pid, size, object=obj, offset=offset, shared=fields.get("shared", False),
                          prot=fields.get("prot", "rw"), addr=fields.get("addr"), fixed=fields.get("fixed", False),
                          align=fields.get("align"))
            self.handles[pid][fields["vma"]] = [addr, size]
        elif op == "truncate":
            s.truncate(fields["object"], fields["size"])
        else:
            base, size = self.handles[pid][fields["vma"]]
            if op == "mremap":
                new = s.mremap(pid, base, size, fields["size"], fields.get("addr"))
                self.handles[pid][fields["vma"]] = [new, fields["size"]]
                return None
            offset = fields.get("offset", 0)
            length = fields.get("length", (_touched(s, pid, base, size) if op == "touch" else size) - offset)
            if length <= 0:
                raise SimulationError(f"offset {offset} is at or past the end of mapping {fields['vma']!r} "
                                      f"({size} bytes); give a smaller offset or a length")
            if op == "munmap":
                s.munmap(pid, base + offset, length)
            elif op == "mprotect":
                s.mprotect(pid, base + offset, length, fields["prot"])
            elif op == "madvise" and fields.get("advice", "dontneed") == "dontneed":
                s.madvise_dontneed(pid, base + offset, length)
            elif op == "madvise":
                s.madvise_thp(pid, base + offset, length, fields["advice"])
            elif op == "touch":
                acc = accesses(base + offset, length, fields.get("pattern", "sequential"),
                               stride=fields.get("stride", 4096), count=fields.get("count"),
                               seed=fields.get("seed", 0), zipf_s=fields.get("zipf_s", 1.0))
                return s.access(pid, acc, write=fields.get("access", "read") == "write")
        return None


def run(scenario: Scenario, policy: str, *, cost: CostModel | None = None, check: bool = False,
        progress: Callable[[int, int], None] | None = None, translation: bool = False,
        task_size: int | None = None, observe: Callable[[System, StepResult], None] | None = None) -> RunResult:
    """Run ``scenario`` under ``policy`` on the simulator.

    With ``translation`` (or the scenario's ``[machine] translation``), touches are also run
    through the translation model and every step carries its ``translation`` figures.
    ``task_size`` puts the top of every address space lower than the architecture's; ``observe``
    is called with the system and each step's result as it is made (to add what a caller needs).

    A scenario error raised while running (a process used after it was killed, a call the
    kernel refuses) is raised as :class:`ScenarioError` with the step's file and line; what ran
    before it is on the exception as ``partial`` (a :class:`RunResult` marked incomplete).
    """
    cost = cost or load_profile()
    m = scenario.machine
    system = System(policy, memory=m.memory, cpus=m.cpus, aslr_bits=m.aslr_bits, seed=m.seed, levels=m.levels,
                    mmap_base=m.mmap_base, thp=m.thp, task_size=task_size, check=check, scattered=m.scattered,
                    frames_in_order=m.frames_in_order,
                    translation=translation_options(m, translation))
    create_objects(scenario, system)
    runner = Runner(scenario, system)
    results: list[StepResult] = []
    total = scenario.nr_operations
    done = 0
    started = time.perf_counter_ns()
    for step in scenario.steps:
        before = system.k.events.snapshot()
        offpath = system.k.offpath.snapshot()
        t0 = time.perf_counter_ns()
        signals = []
        for fields in step.expand():
            try:
                sig = runner.execute(step, fields)
            except (SimulationError, MemoryError) as exc:
                error = step_error(scenario, step, exc)
                error.partial = _result(scenario, system, results, cost, started, complete=False,  # type: ignore[attr-defined]
                                        error=str(error))
                raise error from None
            if sig is not None:
                signals.append({"pid": fields.get("pid"), "signal": sig.signal, "addr": hex(sig.addr),
                                "reason": sig.reason})
            done += 1
            if progress is not None:
                progress(done, total)
        wall = time.perf_counter_ns() - t0
        delta = system.k.events.snapshot() - before
        background = system.k.offpath.snapshot() - offpath  # work done off the caller's path
        figures = system.translation.take_step().to_json() if system.translation is not None else None
        results.append(StepResult(
            index=step.index, op=step.op, pid=step.fields.get("pid"), repeat=step.repeat, line=step.line,
            processes=system.processes(), system=system.system(), est_ns=cost.estimate(delta - background),
            wall_ns=wall, signals=signals, events={k: v for k, v in system.k.events.as_dict(before).items() if v},
            translation=figures, est_ns_background=cost.estimate(background),
            events_background={k: v for k, v in system.k.offpath.as_dict(offpath).items() if v}))
        if observe is not None:
            observe(system, results[-1])
    return _result(scenario, system, results, cost, started)


def _touched(s: System, pid: str, base: int, size: int) -> int:
    """What a touch with no length covers of the mapping at ``base``: all of it -- but of an mshare
    region only its object, not the rest of the region (past the object's end it would fault)."""
    vma = s.task(pid).mm.vma_lookup(base)
    if vma is not None and vma.obj is not None and vma.obj.is_mshare:
        return min(size, vma.obj.size)
    return size


def translation_options(machine, on: bool) -> dict | bool:
    """What :class:`System` needs to model translation for ``machine`` (False: off)."""
    if not (on or machine.translation):
        return False
    from ..translation import get_cpu

    return {"cpu": get_cpu(machine.translation_cpu), "slice": machine.translation_slice,
            "sample": machine.translation_sample}


def create_objects(scenario: Scenario, system: System) -> None:
    """The scenario's objects, in ``system``."""
    for obj in scenario.objects:
        try:
            system.create_object(obj.name, obj.kind, obj.size, region=obj.region)
        except MemoryError:
            raise ScenarioError(f"object {obj.name!r}: {format_size(obj.size)} is more than this machine has the "
                                "memory to simulate (its page cache is an array of one entry per page)",
                                scenario.path, obj.line) from None


def step_error(scenario: Scenario, step: Step, exc: SimulationError | MemoryError) -> ScenarioError:
    """A step the simulated kernel refused, or that this machine has not the memory to simulate."""
    what = str(exc) if isinstance(exc, SimulationError) else \
        f"the simulator ran out of this machine's memory ({exc}); make the scenario smaller"
    return ScenarioError(f"step {step.index} ({step.op}): {what}", scenario.path, step.line)


def _result(scenario: Scenario, system: System, results: list[StepResult], cost: CostModel, started: int,
            complete: bool = True, error: str | None = None) -> RunResult:
    return RunResult(scenario=scenario.name, policy=system.policy.name, backend="sim", steps=results,
                     profile=cost.name, wall_ns=time.perf_counter_ns() - started,
                     events=system.k.events.as_dict(), complete=complete, error=error)
