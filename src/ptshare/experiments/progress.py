"""One progress bar per experiment on stderr: it moves run by run, and inside a long run step by step
(the report's bar moves figure by figure).

Drawn only on a terminal, and only once the experiment has taken more than a second.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


class RunsBar:
    """``fork-vs-segment [######........] run 3/32 eager@4  12s left``."""

    def __init__(self, label: str, runs: int, *, stream=None, delay: float = 1.0, enabled: bool | None = None):
        self.label = label
        self.runs = max(1, runs)
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.start = time.monotonic()
        self.delay = delay
        self._last = 0.0
        self._drawn = False

    def run(self, index: int, name: str) -> Callable[[int, int], None]:
        """The progress callback of run ``index`` (0-based); call it with (steps done, steps)."""

        def step(done: int, total: int) -> None:
            self.draw(index + (done / total if total else 1.0), f"run {index + 1}/{self.runs} {name}")

        step(0, 1)
        return step

    def draw(self, runs_done: float, what: str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        elapsed = now - self.start
        if elapsed < self.delay or now - self._last < 0.1:
            return
        self._last = now
        frac = min(1.0, runs_done / self.runs)
        width = 24
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        eta = f"{elapsed / frac - elapsed:4.0f}s left" if frac > 0.02 else ""
        line = f"{self.label} [{bar}] {what} {eta}"[:100]
        self.stream.write("\r" + line.ljust(100))
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()
            self._drawn = False
