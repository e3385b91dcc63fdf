"""Scenarios: TOML files or Python objects, checked on load, run on the simulator.

* :class:`Scenario`, :class:`Machine` -- build one in Python (:meth:`Scenario.step`).
* :func:`load`, :func:`loads` -- read one from a file or a string.
* :func:`run` -- run one under a policy; :class:`RunResult` has the JSON contract.
"""

from .load import load, loads
from .model import OPS, Machine, Scenario, Step
from .run import SCHEMA, RunResult, StepResult, run

__all__ = ["OPS", "SCHEMA", "Machine", "RunResult", "Scenario", "Step", "StepResult", "load", "loads", "run"]
