"""``--set KEY=VALUE``: an experiment's parameters from the command line, typed by their defaults."""

from __future__ import annotations

import math
from typing import Any

from ..errors import UsageError
from .base import Experiment

_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def _convert(key: str, text: str, like: Any) -> Any:
    try:
        if isinstance(like, bool):
            if text.lower() not in _TRUE + _FALSE:
                raise ValueError
            return text.lower() in _TRUE
        if isinstance(like, int | float):
            number = int(text) if isinstance(like, int) else float(text)
            if not 0 <= number < math.inf:  # counts, sizes, fractions, exponents, seeds: none is negative
                raise ValueError
            return number
    except ValueError:
        kind = {bool: "true or false", int: "a whole number, 0 or more",
                float: "a finite number, 0 or more"}[type(like)]
        raise UsageError(f"--set {key}={text}: the value must be {kind}") from None
    return text


def parse_sets(exp: Experiment, items: list[str]) -> dict[str, Any]:
    """``["sizes_gib=0,1,2", "with_host=true"]`` -> typed overrides of ``exp``'s parameters."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise UsageError(f"--set {item!r}: write KEY=VALUE, for example --set {next(iter(exp.defaults))}=...")
        if key not in exp.defaults:
            raise UsageError(f"experiment {exp.name} has no parameter {key!r}; its parameters: "
                             f"{', '.join(exp.defaults)}")
        like = exp.defaults[key]
        if isinstance(like, list):
            element = like[0] if like else ""
            parts = [p.strip() for p in text.split(",") if p.strip()]
            if not parts:
                raise UsageError(f"--set {key}=: give a comma-separated list")
            out[key] = [_convert(key, p, element) for p in parts]
        else:
            out[key] = _convert(key, text.strip(), like)
    return out


def as_options(exp: Experiment, params: dict[str, Any]) -> list[str]:
    """The options (``--quick``, ``--set``...) that give ``params``: the fewest, from the defaults or ``--quick``."""
    quick = {**exp.defaults, **exp.quick}
    plain, from_quick = _sets(exp.defaults, params), _sets(quick, params)
    return plain if len(plain) <= len(from_quick) else ["--quick", *from_quick]


def _sets(base: dict[str, Any], params: dict[str, Any]) -> list[str]:
    return [f"--set {key}={as_text(value)}" for key, value in params.items() if base.get(key) != value]


def as_text(value: Any) -> str:
    """A parameter's value as ``--set`` takes it: ``0,0.25,1``, ``true``."""
    if isinstance(value, list):
        return ",".join(as_text(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)
