"""Option values argparse checks as it parses: an error there names the option and what it takes."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def whole_number(option: str, least: int, most: int | None = None) -> Callable[[str], int]:
    """An argparse ``type`` for ``option``: a whole number from ``least`` (to ``most``)."""
    allowed = f"from {least} to {most}" if most is not None else f"of at least {least}"

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = least - 1
        if n < least or (most is not None and n > most):
            raise argparse.ArgumentTypeError(f"{option} takes a whole number {allowed}, not {text!r}")
        return n

    return parse
