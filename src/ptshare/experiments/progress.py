"""Progress of an experiment on stderr.  On a terminal, one bar per experiment: it moves run by run,
and inside a long run step by step (the report's bar moves figure by figure), once the experiment has
taken more than a second.  Elsewhere (a pipe, a log file), one line per finished run."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from ..cli.progress import Progress


class RunsBar:
    """``fork-vs-segment |######        | run 3/32 eager@4  12s left`` on a terminal;
    ``fork-vs-segment: run 3/32 eager@4 done in 1.2 s`` per run elsewhere.

    ``enabled``: True draws the bar, False prints nothing, None (the default) chooses by ``stream``.
    """

    def __init__(self, label: str, runs: int, *, stream: TextIO | None = None, delay: float = 1.0,
                 enabled: bool | None = None) -> None:
        self.label = label
        self.runs = max(1, runs)
        self.stream = stream or sys.stderr
        self.bar = Progress(label, stream=self.stream, delay=delay, enabled=enabled)
        self.lines = enabled is None and not self.bar.enabled

    def run(self, index: int, name: str) -> Callable[[int, int], None]:
        """The progress callback of run ``index`` (0-based); call it with (steps done, steps).  The run
        is finished when done reaches steps."""
        started = time.monotonic()
        reported = False

        def step(done: int, total: int) -> None:
            nonlocal reported
            runs_done = index + (done / total if total else 1.0)
            self.bar.draw(runs_done / self.runs, f"run {index + 1}/{self.runs} {name}")
            if self.lines and done >= total and not reported:
                reported = True
                self.stream.write(f"{self.label}: run {index + 1}/{self.runs} {name} done in "
                                  f"{time.monotonic() - started:.1f} s\n")
                self.stream.flush()

        step(0, 1)
        return step

    def close(self) -> None:
        self.bar.close()
