"""Option values argparse checks as it parses: an error there names the option and what it takes."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ..errors import UsageError
from ..policies import POLICIES


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


def policy_names(text: str) -> list[str]:
    """The policies a ``--policy`` value names, each checked."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise UsageError("--policy needs at least one policy name")
    for name in names:
        if name not in POLICIES:
            raise UsageError(f"unknown policy {name!r}; known policies: {', '.join(POLICIES)}")
    return names


def load_scenario(path: str):
    """The scenario at ``path``, loaded and checked."""
    from ..scenario import load

    return load(path)


def load_cost(path: str | None):
    """The cost profile at ``path`` (the shipped one when None)."""
    from ..cost import load_profile

    return load_profile(path)
