"""Sweeps: a user's own scenario run over a grid of its fields, under several policies.

* :mod:`.keys` -- ``--vary KEY=V1,V2``: which fields a key names, and the scenario with them set.
* :mod:`.grid` -- the grid's points, made (or reused) and stored as runs of the results database.
* :mod:`.metrics` -- what is kept of each run.
* :mod:`.plot` draws a metric against a varied key; :mod:`.cli` is ``ptshare sweep``.

Where the runs are made (here, or on a Dask cluster) is :mod:`ptshare.experiments.executor`'s
business, shared with the experiments.
"""

from .grid import Point, plan, run_sweep
from .keys import Axis, parse_axes, resolve, with_values

__all__ = ["Axis", "Point", "parse_axes", "plan", "resolve", "run_sweep", "with_values"]
