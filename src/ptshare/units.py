"""Sizes and addresses as users write them: ``4096``, ``4KiB``, ``2MiB``, ``300GiB``, ``0x7f0000000000``."""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tb": 1 << 40,
    "tib": 1 << 40,
    "p": 1 << 50,
    "pb": 1 << 50,
    "pib": 1 << 50,
}

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
MAX_SIZE = 1 << 57  # the largest virtual address space (5-level paging)

SIZE_HELP = "a non-negative integer number of bytes, or a number with a unit: 4096, 4KiB, 2MiB, 300GiB, 1TiB"


def parse_size(value: object) -> int:
    """Parse a size in bytes.  Raises ``ValueError`` with a message that says what is allowed.

    Binary units only (KB and KiB both mean 1024 bytes, as in the kernel's own ``memparse``).
    Hex numbers (``0x...``) are accepted for addresses.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size; expected {SIZE_HELP}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{value!r} is not a whole number of bytes; expected {SIZE_HELP}")
        number = int(value)
    elif isinstance(value, str):
        text = value.strip().replace("_", "")
        if re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
            number = int(text, 16)
        else:
            match = _SIZE_RE.match(text)
            if not match:
                raise ValueError(f"{value!r} is not a size; expected {SIZE_HELP}")
            digits, unit = match.groups()
            if unit.lower() not in _UNITS:
                raise ValueError(f"{value!r} has an unknown unit {unit!r}; use B, KiB, MiB, GiB, TiB or PiB")
            scaled = float(digits) * _UNITS[unit.lower()] if "." in digits else int(digits) * _UNITS[unit.lower()]
            if isinstance(scaled, float):
                if not scaled.is_integer():
                    raise ValueError(f"{value!r} is not a whole number of bytes; expected {SIZE_HELP}")
                scaled = int(scaled)
            number = scaled
    else:
        raise ValueError(f"{value!r} is not a size; expected {SIZE_HELP}")
    if number < 0:
        raise ValueError(f"{value!r} is negative; sizes and offsets must be 0 or more")
    if number > MAX_SIZE:
        raise ValueError(f"{value!r} is larger than any address space (2^57 bytes)")
    return number


def format_size(nbytes: float) -> str:
    """Format a byte count for people: ``2052 kB`` style is left to callers; this gives ``1.5 GiB``."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_ns(ns: float) -> str:
    """Format a duration given in nanoseconds."""
    if ns < 1_000:
        return f"{ns:.0f} ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:.1f} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e9:.2f} s"
