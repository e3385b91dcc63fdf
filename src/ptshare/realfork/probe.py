"""``forkprobe.c`` compiled and run: fork, its child's teardown and munmap, timed by a C process
whose own address space is a few VMAs and a few dozen pages.

A host-backend worker is a Python interpreter: its fork also copies the interpreter's 160 VMAs and
thousands of PTEs, and the memory it writes is whatever its allocator hands out after the backend
has written and freed memory (:mod:`ptshare.host.guest`).  The probe has neither, so what it
measures is the kernel's work for the memory a program wrote, as a program sees it.

The source ships with ptshare (package data) and is compiled once per source version, with the
system's ``cc``, into ``$XDG_CACHE_HOME/ptshare`` (``~/.cache/ptshare``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import PtshareError

LAYOUTS = ("fresh", "recycled", "shuffled")


class ProbeError(PtshareError):
    """The probe cannot be compiled or run here (no C compiler, not Linux, too little memory)."""


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ptshare"


def compiler_problem() -> str | None:
    """Why the probe cannot be built here, or None."""
    if not hasattr(os, "fork") or os.uname().sysname != "Linux":
        return "the fork probe needs Linux"
    if shutil.which("cc") is None:
        return "the fork probe is compiled at run time, and this machine has no C compiler ('cc'; apt-get install gcc)"
    return None


def executable() -> Path:
    """The compiled probe, built now if this source version has not been."""
    problem = compiler_problem()
    if problem is not None:
        raise ProbeError(problem)
    source = resources.files("ptshare.realfork").joinpath("forkprobe.c").read_bytes()
    target = _cache_dir() / f"forkprobe-{hashlib.sha256(source).hexdigest()[:16]}"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "forkprobe.c"
        src.write_bytes(source)
        out = Path(tmp) / "forkprobe"
        proc = subprocess.run(["cc", "-O2", "-o", str(out), str(src)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ProbeError(f"cannot compile the fork probe with cc: {proc.stderr.strip()[-1000:]}")
        os.replace(out, target)  # atomic: a concurrent build leaves one complete file
    return target


@dataclass(frozen=True)
class Span:
    """One timed operation: wall time and the CPU time of the thread that did it."""

    wall_ns: int
    cpu_ns: int


@dataclass(frozen=True)
class ProbeRun:
    """One run of the probe: the memory it wrote, how adjacent its frames were, and what it timed."""

    size: int
    stride: int
    vmas: int
    layout: str
    adjacent: float  # share of written pages whose frame is next to the previous page's; -1 if hidden
    touch: Span
    forks: tuple[Span, ...]
    exits: tuple[Span, ...]  # each child's munmap of everything: exit_mmap's work on the copy
    munmap: Span

    @property
    def pages(self) -> int:
        return self.size // self.stride

    def median_fork(self, clock: str = "cpu_ns") -> float:
        return float(statistics.median(getattr(f, clock) for f in self.forks))

    def median_exit(self, clock: str = "cpu_ns") -> float:
        return float(statistics.median(getattr(e, clock) for e in self.exits))


def run_probe(size: int, *, stride: int = 4096, vmas: int = 0, layout: str = "fresh", forks: int = 5,
              thp: bool = False, warm: bool = True) -> ProbeRun:
    """Run the probe once: write ``size`` bytes one byte per ``stride`` (and ``vmas`` one-page
    VMAs), then fork ``forks`` times, after one warm-up fork unless ``warm`` is false (see ``forkprobe.c``)."""
    if layout not in LAYOUTS:
        raise ProbeError(f"unknown page layout {layout!r}; layouts: {', '.join(LAYOUTS)}")
    args = [str(executable()), f"size={size}", f"stride={stride}", f"vmas={vmas}", f"layout={layout}",
            f"forks={forks}", f"thp={int(thp)}", f"warm={int(warm)}"]
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ProbeError(f"the fork probe failed ({' '.join(args[1:])}): {proc.stderr.strip()[-500:]}")
    doc = json.loads(proc.stdout)
    return ProbeRun(doc["size"], doc["stride"], doc["vmas"], doc["layout"], doc["adjacent"], Span(**doc["touch"]),
                    tuple(Span(**f["fork"]) for f in doc["forks"]), tuple(Span(**f["exit"]) for f in doc["forks"]),
                    Span(**doc["munmap"]))
