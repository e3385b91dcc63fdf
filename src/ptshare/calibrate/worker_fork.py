"""What a host worker's own address space adds to every fork it makes.

A scenario process on the host is a Python interpreter (:mod:`ptshare.host.worker`), and its real
``fork()`` duplicates the interpreter's VMAs too (about 160) and copies the PTEs of those that
have an ``anon_vma`` (a few thousand: the heap, the libraries' data) -- work the simulator does
not see, since the scenario models only the scenario's mappings.  Left in, it would land in the
fixed cost of fork and make every simulated fork of a small process cost a Python interpreter's.

So one worker is started and read like any live process (:mod:`ptshare.snapshot`: its VMAs from
``/proc/PID/smaps``, its present pages from ``/proc/PID/pagemap``), rebuilt in the simulator,
and forked there: the events of that fork, less those of forking an empty process, are what each
measured fork does beyond the scenario, and calibration adds them to each fork's counts.
"""

from __future__ import annotations

import numpy as np

from ..host.plan import make_plan
from ..host.session import Session
from ..mm.events import NAMES
from ..policies import get_policy
from ..scenario.model import Scenario
from ..snapshot import take
from ..snapshot.replay import exact_faults, new_system, replay_process


def worker_fork_events() -> dict[str, int]:
    """Event counts of forking an idle host worker, beyond those of forking an empty process."""
    scenario = Scenario("calibrate-worker", "one idle worker, to be read")
    scenario.step("spawn", pid="w")
    session = Session(make_plan(scenario))
    try:
        error = session.run()
        if error is not None:
            raise error
        snapshot = take([session.live["w"].pid])
        session.finish()
    finally:
        session.close()
    policy = get_policy("linux")
    system = new_system(snapshot, policy)
    with exact_faults(policy):
        replay_process(system, "w", snapshot.processes[0], [])
    system.spawn("empty")
    worker = _fork_delta(system, "w")
    empty = _fork_delta(system, "empty")
    return {name: int(v) for name, v in zip(NAMES, worker - empty, strict=True) if v}


def _fork_delta(system, name: str) -> np.ndarray:
    before = system.k.events.snapshot()
    system.fork(name, f"{name}+fork")
    delta = system.k.events.snapshot() - before
    system.exit(f"{name}+fork")
    return delta
