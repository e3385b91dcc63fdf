"""The scenario that does what a probe run does, and what the cost model predicts for it.

A probe run maps ``size`` bytes of private anonymous memory, writes one byte every ``stride``
bytes, maps and writes ``vmas`` one-page VMAs, forks, and its child unmaps everything.  The same
as a scenario: one spawned process, the same mappings and touches, a fork, the child's exit.  Its
fork step's events are what the modelled kernel does for the probe's fork; its exit step's, less
what the probe does not time (exit's own fixed cost and the PGD, as the host backend's exit),
for the child's teardown.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..arch import PAGE_SIZE
from ..cost import CostModel, load_profile
from ..scenario import Machine, Scenario, run

SPAN = 2 << 20  # what one PTE table maps
FORK_STEP_OP, EXIT_STEP_OP = "fork", "exit"


def probe_scenario(size: int, stride: int = PAGE_SIZE, vmas: int = 0) -> Scenario:
    """A scenario doing what ``forkprobe size=.. stride=.. vmas=..`` does, up to its child's exit."""
    sc = Scenario(f"forkprobe-{size >> 20}m", f"{size >> 20} MiB of private anonymous memory written one byte per "
                  f"{stride >> 10} KiB, {vmas} one-page VMAs, fork, the child exits", Machine(aslr_bits=0))
    sc.step("spawn", pid="probe")
    if size:
        sc.step("mmap", pid="probe", vma="mem", size=size, **({"align": "2MiB"} if stride >= SPAN else {}))
        sc.step("touch", pid="probe", vma="mem", access="write", stride=stride)
    if vmas:
        sc.step("mmap", pid="probe", vma="v{i}", size=PAGE_SIZE, align="8KiB", repeat=vmas)
        sc.step("touch", pid="probe", vma="v{i}", access="write", repeat=vmas)
    sc.step("fork", pid="probe", child="child")
    sc.step("exit", pid="child")
    return sc


@dataclass(frozen=True)
class Prediction:
    """The modelled kernel's events for a probe run's fork and its child's exit, and their time."""

    fork_events: dict[str, int]
    exit_events: dict[str, int]
    fork_ns: float
    profile: str
    machine: str

    @property
    def ptes(self) -> int:
        return self.fork_events.get("ptes_copied", 0)


def predict(size: int, stride: int = PAGE_SIZE, vmas: int = 0, cost: CostModel | None = None) -> Prediction:
    """Simulate the probe's scenario under ``linux``; the fork's estimated time by ``cost``."""
    cost = cost or load_profile()
    result = run(probe_scenario(size, stride, vmas), "linux", cost=cost)
    fork = next(s for s in result.steps if s.op == FORK_STEP_OP)
    exit_ = next(s for s in result.steps if s.op == EXIT_STEP_OP)
    return Prediction(dict(fork.events), dict(exit_.events), fork.est_ns, cost.name, cost.machine)
