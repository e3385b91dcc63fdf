"""Progress on stderr for long runs: a bar on a terminal (tqdm draws it, as wide as the terminal is,
redrawn when the terminal is resized), nothing otherwise, and nothing in the first second."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

STEPS = 1000  # the bar's resolution: a fraction is drawn as a count out of STEPS


class Progress:
    """Call with (done, total), or :meth:`draw` a fraction with a text beside it:
    ``label |#######     | what  12s left``, at most ten times a second.

    ``enabled``: draw or not (default: whether ``stream`` is a terminal).  ``columns``: the width to
    fit (default: the terminal's, read again at each redraw).
    """

    def __init__(self, label: str, *, stream: TextIO | None = None, delay: float = 1.0,
                 enabled: bool | None = None, columns: int | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.delay = delay
        self.columns = columns
        self._bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        self.draw(done / total if total else 1.0, f"{done:,}/{total:,}", final=done >= total)

    def draw(self, frac: float, what: str, final: bool = False) -> None:
        """The bar at ``frac`` (0 to 1), with ``what`` beside it."""
        if not self.enabled:
            return
        if self._bar is None:
            self._bar = tqdm(total=STEPS, desc=self.label, unit=what, file=self.stream, delay=self.delay,
                             leave=False, position=0, mininterval=0.1, ncols=self.columns,
                             dynamic_ncols=self.columns is None,
                             bar_format="{desc} |{bar}| {unit} {remaining} left", ascii=" #")
        self._bar.unit = what  # the text beside the bar ({postfix} would add a comma before it)
        self._bar.update(min(STEPS, round(frac * STEPS)) - self._bar.n)
        if final:
            self._bar.refresh()

    def close(self) -> None:
        """Erase the bar (a finished command leaves no bar behind)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
