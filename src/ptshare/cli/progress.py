"""A progress bar on stderr for long runs (only on a terminal, only after the first second)."""

from __future__ import annotations

import sys
import time


class Progress:
    """Call with (done, total); draws ``label [####....] done/total  eta`` at most ten times a second."""

    def __init__(self, label: str, *, stream=None, delay: float = 1.0, enabled: bool | None = None,
                 width: int = 30, columns: int = 79) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.start = time.monotonic()
        self.delay = delay
        self.width = width
        self.columns = columns
        self._last = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        self.draw(done / total if total else 1.0, f"{done}/{total}", final=done >= total)

    def draw(self, frac: float, what: str, final: bool = False) -> None:
        """The bar at ``frac`` (0 to 1), with ``what`` beside it."""
        if not self.enabled:
            return
        now = time.monotonic()
        elapsed = now - self.start
        if elapsed < self.delay or (now - self._last < 0.1 and not final):
            return
        self._last = now
        frac = min(1.0, frac)
        filled = int(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        eta = f"{elapsed / frac - elapsed:5.0f}s left" if 0 < frac < 1 else f"{elapsed:5.1f}s"
        line = f"{self.label} [{bar}] {what} {eta}"[:self.columns]
        self.stream.write("\r" + line.ljust(self.columns))
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * self.columns + "\r")
            self.stream.flush()
            self._drawn = False
