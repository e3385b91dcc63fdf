"""Virtual memory areas: models ``struct vm_area_struct`` and the ``vm_flags`` of include/linux/mm.h."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..arch import PAGE_SHIFT

if TYPE_CHECKING:
    from .mm_struct import MM
    from .pagecache import AddressSpace

VM_READ = 0x00000001
VM_WRITE = 0x00000002
VM_EXEC = 0x00000004
VM_SHARED = 0x00000008
VM_MAYREAD = 0x00000010
VM_MAYWRITE = 0x00000020
VM_MAYEXEC = 0x00000040
VM_MAYSHARE = 0x00000080
VM_PFNMAP = 0x00000400
VM_LOCKED = 0x00002000
VM_DONTCOPY = 0x00020000
VM_ACCOUNT = 0x00100000
VM_DONTEXPAND = 0x00040000
VM_HUGETLB = 0x00400000
VM_WIPEONFORK = 0x02000000
VM_MIXEDMAP = 0x10000000
VM_HUGEPAGE = 0x20000000  # MADV_HUGEPAGE
VM_NOHUGEPAGE = 0x40000000  # MADV_NOHUGEPAGE

VM_ACCESS_FLAGS = VM_READ | VM_WRITE | VM_EXEC
VM_SPECIAL = VM_DONTEXPAND | VM_PFNMAP | VM_MIXEDMAP

_FLAG_NAMES = {
    VM_READ: "read", VM_WRITE: "write", VM_EXEC: "exec", VM_SHARED: "shared", VM_MAYSHARE: "mayshare",
    VM_LOCKED: "locked", VM_DONTCOPY: "dontcopy", VM_ACCOUNT: "account", VM_HUGETLB: "hugetlb",
    VM_WIPEONFORK: "wipeonfork",
    VM_PFNMAP: "pfnmap", VM_MIXEDMAP: "mixedmap", VM_HUGEPAGE: "hugepage", VM_NOHUGEPAGE: "nohugepage",
}

PROTS = ("", "r", "rw", "rx", "rwx")


def prot_to_flags(prot: str) -> int:
    """``"rw"`` -> VM_READ|VM_WRITE.  Raises ValueError naming the allowed values."""
    if prot not in PROTS:
        raise ValueError(f"prot {prot!r} is not one of {', '.join(repr(p) for p in PROTS)}")
    flags = 0
    if "r" in prot:
        flags |= VM_READ
    if "w" in prot:
        flags |= VM_WRITE
    if "x" in prot:
        flags |= VM_EXEC
    return flags


def flags_str(vm_flags: int) -> str:
    return "|".join(name for bit, name in _FLAG_NAMES.items() if vm_flags & bit) or "none"


@dataclass(eq=False)
class AnonVma:
    """Models ``struct anon_vma``: its existence is what tells fork that a VMA holds anonymous pages."""

    id: int = field(default_factory=itertools.count(1).__next__)

    def __repr__(self) -> str:
        return f"<AnonVma {self.id}>"


@dataclass(eq=False)
class VMA:
    """One mapping ``[vm_start, vm_end)`` of an mm."""

    mm: MM
    vm_start: int
    vm_end: int
    vm_flags: int
    vm_pgoff: int  # in pages of the backing object's page size... of 4 KiB, as Linux keeps it
    obj: AddressSpace | None = None
    anon_vma: AnonVma | None = None
    # The anon_vmas this VMA's pages may belong to (``anon_vma_chain``): its own, and, in a
    # child of fork, those of the parent's VMA it was copied from.  Only its length matters here.
    anon_vma_chain: tuple[AnonVma, ...] = ()

    def __repr__(self) -> str:
        backing = self.obj.name if self.obj is not None else "anon"
        return (
            f"<VMA {self.vm_start:#x}-{self.vm_end:#x} {flags_str(self.vm_flags)} {backing} "
            f"pgoff={self.vm_pgoff:#x}{' anon_vma' if self.anon_vma else ''}>"
        )

    @property
    def size(self) -> int:
        return self.vm_end - self.vm_start

    @property
    def is_anonymous(self) -> bool:
        """``vma_is_anonymous()``: private anonymous memory (no backing object)."""
        return self.obj is None

    @property
    def is_fork_child(self) -> bool:
        """``vma_is_fork_child()`` (mm/vma.c): the VMA has an anon_vma and its chain links it to
        more than one -- it was copied by fork from a VMA with anonymous pages (or split or moved
        from one that was).  Linux keeps such a VMA from merging with one that has no anon_vma."""
        return self.anon_vma is not None and len(self.anon_vma_chain) > 1

    @property
    def is_shared(self) -> bool:
        return bool(self.vm_flags & VM_SHARED)

    @property
    def is_hugetlb(self) -> bool:
        return bool(self.vm_flags & VM_HUGETLB)

    @property
    def is_cow_mapping(self) -> bool:
        """``is_cow_mapping()``: private and possibly writable, so fork write-protects its PTEs."""
        return (self.vm_flags & (VM_SHARED | VM_MAYWRITE)) == VM_MAYWRITE

    @property
    def wants_writenotify(self) -> bool:
        """``vma_wants_writenotify()``: a shared mapping of an object that tracks dirtying (a disk
        file), whose PTEs stay read-only until ``page_mkwrite`` -- so their dirty bit matters."""
        return self.is_shared and self.obj is not None and self.obj.writenotify

    def pte_writable(self) -> bool:
        """Whether ``vm_page_prot`` lets a freshly mapped page of this VMA be written without a fault.

        True for shared writable mappings whose object does not track dirtying (tmpfs,
        hugetlbfs); disk files keep shared PTEs read-only until ``page_mkwrite``, and private
        mappings map file pages read-only so that the first write copies them.
        """
        return bool(self.vm_flags & VM_WRITE) and self.is_shared and not self.wants_writenotify

    def linear_page_index(self, addr: int) -> int:
        """File index (in 4 KiB pages) of ``addr``."""
        return ((addr - self.vm_start) >> PAGE_SHIFT) + self.vm_pgoff
