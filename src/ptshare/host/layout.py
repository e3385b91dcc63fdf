"""Address-space layouts, as ``/proc/PID/maps`` shows them: the VMAs of a region, each as
``[start, end, perms]`` (``perms`` as maps writes it: ``rw-p``, ``r--s``...), so that where
mappings went, where they end and which ones merged can be compared between the kernel and the
simulator."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..mm.vma import VM_EXEC, VM_MAYSHARE, VM_READ, VM_WRITE

if TYPE_CHECKING:
    from ..mm.mm_struct import MM

Layout = list[list]  # [[start, end, perms], ...] in address order


def maps_layout(lo: int, hi: int, path: str = "/proc/self/maps") -> Layout:
    """The VMAs of [lo, hi) in a maps file (this process's, by default)."""
    with open(path, "rb") as f:
        text = f.read()
    out = []
    for line in text.split(b"\n"):
        fields = line.split(None, 2)
        if len(fields) < 2:
            continue
        start, end = (int(x, 16) for x in fields[0].split(b"-"))
        if start < hi and end > lo:
            out.append([start, end, fields[1].decode()])
    return out


def mm_layout(mm: MM, lo: int, hi: int) -> Layout:
    """The simulator's VMAs of [lo, hi), as maps would show them."""
    out = []
    for vma in mm.vmas:
        if vma.vm_start < hi and vma.vm_end > lo:
            f = vma.vm_flags
            perms = ("r" if f & VM_READ else "-") + ("w" if f & VM_WRITE else "-") + \
                ("x" if f & VM_EXEC else "-") + ("s" if f & VM_MAYSHARE else "p")
            out.append([vma.vm_start, vma.vm_end, perms])
    return out


def describe(layout: Layout | None) -> str:
    """``0x7f..-0x7f.. rw-p, ...``: a layout as one line."""
    if layout is None:
        return "none"
    return ", ".join(f"{start:#x}-{end:#x} {perms}" for start, end, perms in layout) or "empty"
