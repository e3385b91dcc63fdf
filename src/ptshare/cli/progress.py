"""A progress bar on stderr for long runs (only on a terminal, only after the first second)."""

from __future__ import annotations

import sys
import time


class Progress:
    """Call with (done, total); draws ``label [####....] done/total  eta`` at most ten times a second."""

    def __init__(self, label: str, *, stream=None, delay: float = 1.0, enabled: bool | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.start = time.monotonic()
        self.delay = delay
        self._last = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        elapsed = now - self.start
        if elapsed < self.delay or (now - self._last < 0.1 and done < total):
            return
        self._last = now
        width = 30
        frac = done / total if total else 1.0
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        eta = f"{elapsed / frac - elapsed:5.0f}s left" if 0 < frac < 1 else f"{elapsed:5.1f}s"
        self.stream.write(f"\r{self.label} [{bar}] {done}/{total} {eta}")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * 79 + "\r")
            self.stream.flush()
            self._drawn = False
