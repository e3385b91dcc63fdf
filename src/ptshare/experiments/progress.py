"""One progress bar per experiment on stderr: it moves run by run, and inside a long run step by step
(the report's bar moves figure by figure).

Drawn only on a terminal, and only once the experiment has taken more than a second.
"""

from __future__ import annotations

from collections.abc import Callable

from ..cli.progress import Progress


class RunsBar:
    """``fork-vs-segment [######........] run 3/32 eager@4  12s left``."""

    def __init__(self, label: str, runs: int, *, stream=None, delay: float = 1.0, enabled: bool | None = None):
        self.runs = max(1, runs)
        self.bar = Progress(label, stream=stream, delay=delay, enabled=enabled, width=24, columns=100)

    def run(self, index: int, name: str) -> Callable[[int, int], None]:
        """The progress callback of run ``index`` (0-based); call it with (steps done, steps)."""

        def step(done: int, total: int) -> None:
            runs_done = index + (done / total if total else 1.0)
            self.bar.draw(runs_done / self.runs, f"run {index + 1}/{self.runs} {name}")

        step(0, 1)
        return step

    def close(self) -> None:
        self.bar.close()
