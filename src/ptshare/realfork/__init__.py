"""Real programs as the reference for fork's cost.

* :mod:`.probe` -- ``forkprobe.c``, a minimal C process that writes private anonymous memory,
  forks and times it, compiled at run time with the system's ``cc``, and its results.
* :mod:`.predict` -- the scenario that does what a probe run does, and the time the cost model
  predicts for its fork and its child's teardown.
* :mod:`.dependence` -- what fork's cost depends on, measured (``python -m ptshare.realfork.dependence``).
"""
