"""Transparent huge pages on the host: what a scenario asks for, per mapping, and a guard against
khugepaged.

The machine-wide setting (``/sys/kernel/mm/transparent_hugepage/enabled``) is never changed.  A
scenario's ``[machine] thp`` mode is reproduced per mapping instead: with ``always``, every private
anonymous mapping gets ``MADV_HUGEPAGE`` (which, with the host at ``madvise`` or ``always``, makes
its faults what ``always`` makes them); with ``never``, ``MADV_HUGEPAGE`` advice becomes
``MADV_NOHUGEPAGE``; every other mapping gets ``MADV_NOHUGEPAGE``, as before THP was modelled.

khugepaged collapses 4 KiB pages of ``VM_HUGEPAGE`` mappings back into huge pages in the
background (every ``scan_sleep_millisecs``, 10 s by default), which the simulator does not model.
A host run that uses THP is therefore bracketed by ``/proc/vmstat``'s ``thp_collapse_alloc``: if
khugepaged collapsed anything anywhere on the machine meanwhile, the run is repeated.
"""

from __future__ import annotations

from pathlib import Path

from .objects import HostError

THP_DIR = Path("/sys/kernel/mm/transparent_hugepage")
COLLAPSE_TRIES = 3


def mmap_hugepage(mode: str, anon_private: bool) -> bool:
    """Whether a new mapping gets MADV_HUGEPAGE (else MADV_NOHUGEPAGE)."""
    return mode == "always" and anon_private


def advice_on_host(mode: str, advice: str) -> str:
    """The advice the host applies for a scenario's ``madvise`` step."""
    if advice == "hugepage" and mode == "never":
        return "nohugepage"
    return advice


def _selected(path: Path) -> str:
    text = path.read_text()
    return text[text.index("[") + 1:text.index("]")]


def check_thp_host() -> None:
    """Refuse a host whose settings cannot reproduce the modelled THP: 2 MiB THP turned off, or
    the huge zero page not used (the model maps it on read faults, as the default does)."""
    try:
        enabled = _selected(THP_DIR / "enabled")
        pmd = _selected(THP_DIR / "hugepages-2048kB" / "enabled") if (THP_DIR / "hugepages-2048kB").exists() \
            else "inherit"
        zero = (THP_DIR / "use_zero_page").read_text().strip()
    except (OSError, ValueError):
        raise HostError(f"this scenario uses transparent huge pages, but {THP_DIR} cannot be read on this host; "
                        "run it on a kernel with CONFIG_TRANSPARENT_HUGEPAGE") from None
    effective = enabled if pmd == "inherit" else pmd
    if effective == "never":
        raise HostError("this scenario uses transparent huge pages, but 2 MiB THP is 'never' on this host "
                        f"({THP_DIR}/enabled); the host backend does not change it -- set it to 'madvise'")
    if zero != "1":
        raise HostError(f"this scenario uses transparent huge pages, but {THP_DIR}/use_zero_page is {zero}, and "
                        "the model maps the huge zero page on read faults as the default (1) does")


def collapses() -> int:
    """khugepaged's collapses so far, machine-wide (``thp_collapse_alloc``)."""
    for line in Path("/proc/vmstat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "thp_collapse_alloc":
            return int(value)
    return 0
