"""This machine, as benchmark results and cost profiles name it."""

from __future__ import annotations

import os
import platform


def describe() -> str:
    """Kernel release, architecture, CPU model, CPUs and memory: 'Linux 6.18.44 x86_64, AMD EPYC, 2 CPUs, 24 GiB'."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.system()} {platform.release()} {platform.machine()}, {cpu}, {os.cpu_count()} CPUs, "
            f"{mem_gib:.0f} GiB")
