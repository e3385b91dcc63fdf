"""ptshare: what page tables cost a system of many processes, and what sharing them saves.

Public names:

* :class:`System` -- a simulated machine with a policy; processes, mappings, accesses, metrics.
* :func:`get_policy`, :data:`POLICIES` -- the page-table designs.
* :mod:`ptshare.scenario` -- scenarios (TOML files, or built in Python) and running them.
* :mod:`ptshare.errors` -- the exceptions a user can meet.

Everything under ``ptshare.mm`` is the private core.
"""

from .errors import PtshareError, ScenarioError
from .policies import POLICIES, get_policy
from .system import Signal, SimulationError, System

__version__ = "0.1.0"

__all__ = ["POLICIES", "PtshareError", "ScenarioError", "Signal", "SimulationError", "System", "get_policy"]
