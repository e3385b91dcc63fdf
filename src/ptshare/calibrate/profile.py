"""Writing a calibrated cost profile: the TOML that :func:`ptshare.cost.load_profile` reads, in
the layout of the shipped ``profile-default.toml`` -- a header comment saying when, where and how
it was measured and what was kept, ``name``, ``machine``, then ``[ns]`` with one line per event
and a comment saying where each number comes from.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from ..cost import CostModel
from ..machine import describe
from ..mm.events import EVENTS, NAMES
from .fit import NOT_CHARGED, Fit

_NS_LINE = re.compile(r"^\s*([a-z_]+)\s*=\s*[0-9.eE+-]+\s*(?:#\s*(.*))?$")


def base_comments(text: str) -> dict[str, str]:
    """The comment after each ``event = value`` line of a profile's text, by event."""
    out = {}
    for line in text.splitlines():
        m = _NS_LINE.match(line)
        if m and m.group(2):
            out[m.group(1)] = m.group(2).strip()
    return out


@dataclass
class Provenance:
    """How the fit was made, for the header."""

    date: str
    machine: str
    families: list[str]
    repeat: int
    samples: int
    set_aside: int
    quick: bool
    base_name: str
    base_machine: str


def provenance(families: list[str], repeat: int, samples: int, set_aside: int, quick: bool,
               base: CostModel) -> Provenance:
    return Provenance(time.strftime("%Y-%m-%d"), describe(), families, repeat, samples, set_aside, quick,
                      base.name, base.machine)


def _number(ns: float) -> str:
    return str(round(ns)) if ns >= 10 else f"{ns:.1f}"


def _duration(ns: float) -> str:
    """``ns`` for a comment, in ASCII as the default profile writes it: 930 ns, 3.7 us, 12 ms."""
    for unit, scale in (("ms", 1e6), ("us", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.1f} {unit}"
    return f"{ns:.0f} ns"


def _wrap(text: str, width: int = 116) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line] if line else lines


def render(fit: Fit, prov: Provenance, name: str, base_text: str) -> str:
    """The profile's text."""
    lines = [*_header(fit, prov), "", f"name = {_toml_string(name)}", f"machine = {_toml_string(prov.machine)}", "",
             "[ns]", *_ns_lines(fit, base_comments(base_text))]
    return "\n".join(lines) + "\n"


def _comment(text: str, first: str = "# ", rest: str = "# ", width: int = 116) -> list[str]:
    return [(first if i == 0 else rest) + t for i, t in enumerate(_wrap(text, width))]


def _header(fit: Fit, prov: Provenance) -> list[str]:
    """When, where, how; how well; and what was kept, and why."""
    measured = [n for n in NAMES if fit.events[n].source == "measured"]
    kept = [n for n in NAMES if fit.events[n].source == "kept"]
    uncharged = [n for n in kept if n in NOT_CHARGED and not fit.events[n].ns]
    kept = [n for n in kept if n not in uncharged]
    method = (
        f"Method: families of small scenarios ({', '.join(prov.families)}), each varying one size at a time, run "
        f"{prov.repeat} times on this kernel by the host backend (medians) and once on the simulator (policy linux) "
        "for the event counts of each step; ns per event by one non-negative least-squares fit over all "
        f"{prov.samples} samples, weighted by 1/measured time, with a fixed cost per call of fork, exit and touch "
        "as intercept (the calls of munmap, mprotect, mremap and madvise are events of the model, fitted from their "
        "times less what measuring a call adds)"
        + (f"; {prov.set_aside} host runs of a sample set aside (its fault count differed from the model's)"
           if prov.set_aside else "") + "."
        + (" A --quick run: small sizes, few runs." if prov.quick else "")
    )
    probe = ("Fork and its child's teardown are timed by a C program (forkprobe) that writes private anonymous "
             "memory (dense: 2, 3 and 6 GiB, and 1 and 2 GiB written in a random order; sparse: one page per 2 MiB "
             "over 1 to 8 GiB; up to 1,024 one-page VMAs), forks three times after a warm-up fork and takes the "
             "median of the forks' CPU time, runs interleaved with the families: a Python worker's own address "
             "space would be in every fork it makes, and the CPU time leaves out the time other processes held the "
             "CPU.  Each probe run is a sample, with the PTEs whose frames are out of order (ptes_copied_scattered, "
             "ptes_zapped_scattered) counted from the frames it read in /proc/self/pagemap.")
    guest = ("Guest memory is written and freed just before each host run, so the runs get memory the hypervisor "
             "has backed: its first-touch cost (about 10 us per 4 KiB page on the project's Firecracker guests) is "
             "not in these numbers.")
    quality = ", ".join(f"{op} {o.r2:.3f} ({o.samples} samples, median |error| {100 * o.median_rel_error:.0f}%)"
                        for op, o in fit.ops.items())
    extra = "; ".join(f"{n} {_duration(e.ns)}" for n, e in fit.pseudo.items())
    lines = ["# ptshare cost profile: nanoseconds per event of the modelled kernel.", "#",
             f"# Measured by `ptshare calibrate` on {prov.date} on {prov.machine}."]
    for para in (method, guest, f"Fit quality, R^2 per op: {quality}.",
                 f"Measured too, but no event of the model stands for them: {extra}. (A fork call is what a host "
                 "worker's fork adds to the kernel's: its Python interpreter's VMAs and PTEs.)", probe):
        lines += ["#", *_comment(para)]
    for e in fit.entangled:
        lines += _comment(f"{e.a} and {e.b} nearly always come together (correlation {e.correlation:+.2f}): only "
                          f"their sum is well determined, {e.total:.0f} +- {e.stderr:.0f} ns.")
    lines += ["#", *_comment(f"Measured: {', '.join(measured)}.")]
    if uncharged:
        lines += ["#", *_comment(f"Not charged, as in the base profile: {', '.join(uncharged)} (each comes with an "
                                 "event that carries its cost).")]
    if kept:
        lines += ["#", *_comment(f"Kept from the profile {prov.base_name!r} ({prov.base_machine}), because:")]
        for n in kept:
            lines += _comment(f"{n}: {fit.events[n].why}", "#  - ", "#    ", 112)
    return lines


def _ns_lines(fit: Fit, comments: dict[str, str]) -> list[str]:
    """One line per event, with where its number comes from."""
    lines = []
    for n in NAMES:
        e = fit.events[n]
        if e.source == "kept" and n not in comments and e.ns == 0:
            continue  # not charged, and the base profile did not name it either
        if e.source == "measured":
            se = "" if e.stderr is None else f" +- {_number(e.stderr)}"
            note = f"measured{se} ({e.samples} sample{'s' if e.samples != 1 else ''})" + (f"; {e.why}" if e.why else "")
        else:
            note = "kept: " + comments.get(n, EVENTS[n]).removeprefix("kept: ")
        lines.append(f"{n + ' = ' + _number(e.ns):<28}# {note}")
    return lines


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
