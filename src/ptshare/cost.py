"""The cost model: nanoseconds per event, so that runs can be compared in time as well as in counts.

A profile is a TOML file with a ``[ns]`` table mapping event names (:data:`ptshare.mm.events.EVENTS`)
to nanoseconds.  The default one ships with ptshare and names the machine it was measured on;
``ptshare calibrate`` writes one for the machine it runs on.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import UsageError
from .files import readable_file
from .mm.events import EVENTS, NAMES


@dataclass(frozen=True)
class CostModel:
    name: str
    machine: str
    ns: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_vector", np.array([self.ns.get(n, 0.0) for n in NAMES], dtype=np.float64))

    def estimate(self, delta: np.ndarray) -> float:
        """Nanoseconds for an event-count vector (as :meth:`Events.snapshot` differences give)."""
        return float(np.dot(delta.astype(np.float64), self._vector))  # type: ignore[attr-defined]

    def breakdown(self, delta: np.ndarray) -> dict[str, float]:
        costs = delta.astype(np.float64) * self._vector  # type: ignore[attr-defined]
        return {name: float(c) for name, c in zip(NAMES, costs, strict=True) if c}


def load_profile(path: str | Path | None = None) -> CostModel:
    """The profile at ``path``, or the default one."""
    if path is None:
        text = resources.files("ptshare.data").joinpath("profile-default.toml").read_text()
        where = "the default profile"
    else:
        try:
            if not readable_file(Path(path)):
                raise UsageError(f"cost profile {path} is not a file (a profile is a TOML file)")
            text = Path(path).read_text()
        except OSError as exc:
            raise UsageError(f"cannot read cost profile {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise UsageError(f"cost profile {path} is not a text file (TOML, UTF-8); "
                             "make one with 'ptshare calibrate'") from None
        where = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{where}: not valid TOML: {exc}") from None
    ns = data.get("ns")
    if not isinstance(ns, dict):
        raise UsageError(f"{where}: needs an [ns] table of event = nanoseconds")
    for key, value in ns.items():
        if key not in EVENTS:
            raise UsageError(f"{where}: unknown event {key!r}; events are: {', '.join(NAMES)}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
            raise UsageError(f"{where}: {key} = {value!r} must be a non-negative, finite number of nanoseconds")
    return CostModel(str(data.get("name", where)), str(data.get("machine", "unknown")),
                     {k: float(v) for k, v in ns.items()})
