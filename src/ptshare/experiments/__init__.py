"""The experiments: the questions of the 2005-2006 shared page table discussion, answered with runs.

Public names (each experiment module holds one :class:`Experiment`; :mod:`.registry` lists them):

* :data:`EXPERIMENTS` -- name -> experiment, in the report's order.
* :class:`Experiment`, :class:`RunSpec`, :class:`Outcome` -- what an experiment is (:mod:`.base`).
* :func:`run_experiment` -- make (or find) its runs in a :class:`ResultsDB` and analyse them.
* :mod:`.report` writes the HTML report, :mod:`.figures` draws figures (the only users of
  matplotlib, imported when a figure is drawn), :mod:`.cli` is the command line.
"""

from .base import Experiment, Outcome, RunSpec
from .db import ResultsDB
from .registry import EXPERIMENTS
from .runner import run_experiment

__all__ = ["EXPERIMENTS", "Experiment", "Outcome", "ResultsDB", "RunSpec", "run_experiment"]
