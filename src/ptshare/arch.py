"""The architecture: page-table geometry and the encoding of table entries.

Models arch/x86/include/asm/pgtable_types.h and friends.  Everything that knows a shift, an entry
count or a bit of an entry lives here, so generic mm code never touches a mask and another
architecture is a new :class:`Geometry`, not new code.

Directory entries (PGD, P4D, PUD, PMD) are ``int64`` values with a two-bit tag:

====  =========  ====================================================================
tag   name       value
====  =========  ====================================================================
0     none       the slot is empty (``pmd_none``)
1     table      a table of the next level owned by this mm; value = its content id
2     shared     a table shared with other mms (hugetlb PMD sharing, shared PTE tables);
                 value = the shared table's id
3     leaf       a huge page mapped at this level (hugetlb 2 MiB at the PMD);
                 bit 2 = writable, bit 3 = explicit frame (private copy) whose number is
                 the value; without bit 3 the entry maps the file's page at its index
====  =========  ====================================================================

A PTE table's contents are held as two 512-bit masks (present, writable) plus, where any entry
maps an anonymous or zero page, a row of explicit frame numbers.  An entry of a file-backed VMA
without an explicit frame maps the page-cache page at its file index: in Linux a present PTE of a
file mapping that is not a private copy always maps the page cache's page for that index
(truncation unmaps before it evicts), so the frame number is derived through the VMA and equal
tables of different processes can share their storage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PTRS_PER_TABLE = 512
TABLE_BYTES = PAGE_SIZE  # every page-table page is one 4 KiB frame

# Directory entry tags.
E_NONE = 0
E_TABLE = 1
E_SHARED = 2
E_LEAF = 3
_TAG_MASK = 0b11
_LEAF_WRITE = 1 << 2
_LEAF_EXPLICIT = 1 << 3
_VALUE_SHIFT = 4


@dataclass(frozen=True)
class Level:
    """One level of the page-table tree.  ``shift`` is log2 of the bytes one entry maps."""

    name: str
    shift: int

    @property
    def entry_size(self) -> int:
        return 1 << self.shift

    @property
    def span(self) -> int:
        """Bytes mapped by a whole table of this level."""
        return PTRS_PER_TABLE << self.shift


@dataclass(frozen=True)
class Geometry:
    """Page-table geometry.  ``levels[0]`` is the PTE level, ``levels[-1]`` the PGD."""

    name: str
    levels: tuple[Level, ...]
    task_size: int
    map_window: int  # DEFAULT_MAP_WINDOW: mmap stays below this unless given a higher hint

    @property
    def pte(self) -> Level:
        return self.levels[0]

    @property
    def pmd(self) -> Level:
        return self.levels[1]

    @property
    def pud(self) -> Level:
        return self.levels[2]

    @property
    def pgd(self) -> Level:
        return self.levels[-1]

    @property
    def pmd_size(self) -> int:
        return self.levels[1].entry_size

    @property
    def pud_size(self) -> int:
        return self.levels[2].entry_size

    @property
    def hpage_size(self) -> int:
        """The hugetlb page size modelled: one PMD entry (2 MiB)."""
        return self.pmd_size

    def level(self, name: str) -> Level:
        for lvl in self.levels:
            if lvl.name == name:
                return lvl
        raise KeyError(name)

    def index(self, level: Level, addr: int) -> int:
        return (addr >> level.shift) & (PTRS_PER_TABLE - 1)

    def addr_end(self, level: Level, addr: int, end: int) -> int:
        """Models pXd_addr_end(): the end of this entry's span, or ``end`` if that comes first."""
        boundary = (addr + level.entry_size) & ~(level.entry_size - 1)
        return boundary if boundary < end else end


def _geometry(name: str, nlevels: int) -> Geometry:
    names = ["pte", "pmd", "pud", "p4d", "pgd"] if nlevels == 5 else ["pte", "pmd", "pud", "pgd"]
    levels = tuple(Level(n, PAGE_SHIFT + 9 * i) for i, n in enumerate(names))
    va_bits = PAGE_SHIFT + 9 * nlevels
    task_size = (1 << (va_bits - 1)) - PAGE_SIZE
    return Geometry(name, levels, task_size, (1 << 47) - PAGE_SIZE)


X86_64 = _geometry("x86-64 4-level", 4)
X86_64_LA57 = _geometry("x86-64 5-level", 5)


def geometry(levels: int) -> Geometry:
    if levels == 4:
        return X86_64
    if levels == 5:
        return X86_64_LA57
    raise ValueError(f"levels must be 4 or 5, not {levels}")


# --- directory entries -------------------------------------------------------------------------

def entry_tag(entries: np.ndarray | int) -> np.ndarray | int:
    return entries & _TAG_MASK


def entry_value(entries: np.ndarray | int) -> np.ndarray | int:
    return entries >> _VALUE_SHIFT


def mk_table(content_id: int | np.ndarray) -> np.ndarray:
    return (np.asarray(content_id, dtype=np.int64) << _VALUE_SHIFT) | E_TABLE


def mk_shared(table_id: int | np.ndarray) -> int | np.ndarray:
    if isinstance(table_id, np.ndarray):
        return (table_id.astype(np.int64) << _VALUE_SHIFT) | E_SHARED
    return (int(table_id) << _VALUE_SHIFT) | E_SHARED


def mk_leaf(write: np.ndarray, pfn: np.ndarray | None) -> np.ndarray:
    """Huge-page leaf entries; ``pfn`` is None (or 0 where implicit) for page-cache pages."""
    entries = np.full(write.shape, E_LEAF, dtype=np.int64)
    entries |= np.where(write, _LEAF_WRITE, 0)
    if pfn is not None:
        explicit = pfn != 0
        entries |= np.where(explicit, _LEAF_EXPLICIT, 0)
        entries |= np.where(explicit, pfn.astype(np.int64) << _VALUE_SHIFT, 0)
    return entries


def leaf_write(entries: np.ndarray) -> np.ndarray:
    return (entries & _LEAF_WRITE) != 0


def leaf_explicit(entries: np.ndarray) -> np.ndarray:
    return (entries & _LEAF_EXPLICIT) != 0


def leaf_wrprotect(entries: np.ndarray) -> np.ndarray:
    return np.where(entry_tag(entries) == E_LEAF, entries & ~np.int64(_LEAF_WRITE), entries)


def leaf_mkwrite(entries: np.ndarray) -> np.ndarray:
    return np.where(entry_tag(entries) == E_LEAF, entries | np.int64(_LEAF_WRITE), entries)


# --- 512-bit PTE masks (lib/bitmap.c) ----------------------------------------------------------

MASK_BYTES = PTRS_PER_TABLE // 8


def bitmap_pack(bits: np.ndarray) -> np.ndarray:
    """bool[..., 512] -> uint8[..., 64]."""
    return np.packbits(bits, axis=-1, bitorder="little")


def bitmap_unpack(packed: np.ndarray) -> np.ndarray:
    """uint8[..., 64] -> bool[..., 512]."""
    return np.unpackbits(packed, axis=-1, bitorder="little").view(bool)


def bitmap_weight(packed: np.ndarray) -> np.ndarray:
    """Set bits per row of packed masks (uint8[..., 64])."""
    return np.bitwise_count(packed).sum(axis=-1, dtype=np.int64)


def range_bits(lo: np.ndarray | int, hi: np.ndarray | int, rows: int | None = None) -> np.ndarray:
    """bool[rows, 512] true on [lo, hi) per row (lo/hi may be per-row arrays)."""
    idx = np.arange(PTRS_PER_TABLE)
    lo_arr = np.asarray(lo).reshape(-1, 1)
    hi_arr = np.asarray(hi).reshape(-1, 1)
    out = (idx >= lo_arr) & (idx < hi_arr)
    if rows is not None and out.shape[0] != rows:
        out = np.broadcast_to(out, (rows, PTRS_PER_TABLE)).copy()
    return out
