"""Sizes and addresses as users write them: ``4096``, ``4KiB``, ``2MiB``, ``300GiB``, ``0x7f0000000000``."""

from __future__ import annotations

import re

_BINARY = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40, "pib": 1 << 50}
_SI = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15}
_UNITS = {**_BINARY, **_SI}
_AMBIGUOUS = {"k": "Ki", "m": "Mi", "g": "Gi", "t": "Ti", "p": "Pi"}

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
MAX_SIZE = 1 << 57  # the largest virtual address space (5-level paging)

SIZE_HELP = ("a non-negative integer number of bytes, or a number with a unit: 4096, 4KiB, 2MiB, 300GiB, 1TiB "
             "(powers of 2), or 16kB, 100MB, 14GB (powers of 10)")


def parse_size(value: object) -> int:
    """Parse a size in bytes.  Raises ``ValueError`` with a message that says what is allowed.

    KiB, MiB, GiB, TiB and PiB are powers of 2; kB, MB, GB, TB and PB are powers of 10, as SI and
    IEC 80000-13 define them (``10GB`` is 10,000,000,000 bytes: not a whole number of pages, which
    the caller reports).  A bare letter (``4G``, as the kernel's ``memparse`` reads it) is refused
    as ambiguous.  Hex numbers (``0x...``) are accepted for addresses.
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
            if unit.lower() in _AMBIGUOUS:
                binary = f"{digits}{_AMBIGUOUS[unit.lower()]}B"
                raise ValueError(f"{value!r} is ambiguous: write {binary} for powers of 2 or {digits}"
                                 f"{unit.upper()}B for powers of 10")
            if unit.lower() not in _UNITS:
                raise ValueError(f"{value!r} has an unknown unit {unit!r}; use B, KiB, MiB, GiB, TiB or PiB "
                                 "(powers of 2), or kB, MB, GB, TB or PB (powers of 10)")
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


def si_note(value: object) -> str:
    """For a size written in an SI unit, what that unit means and its binary neighbour (for a message
    saying the size is not a whole number of pages); otherwise an empty string."""
    match = _SIZE_RE.match(value.strip().replace("_", "")) if isinstance(value, str) else None
    if match is None or match.group(2).lower() not in _SI:
        return ""
    unit = match.group(2)
    power = {"k": 3, "m": 6, "g": 9, "t": 12, "p": 15}[unit[0].lower()]
    return (f" ({value.strip()} is {parse_size(value):,} bytes: {unit} means 10^{power}; for powers of 2 write "
            f"{match.group(1)}{unit[0].upper()}iB)")


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
