"""The naive reference model: what every process reads, with no page tables at all.

A dict of pages per mapping, copy-on-write by replacing a page on write, and nothing else.  It
follows Linux's visible semantics, not the simulator's code:

* anonymous private memory reads as zeros until written; fork shares it until either side writes;
* a shared mapping reads and writes the object's page (its page cache); a private file mapping
  reads the object's page until it writes, then its own copy;
* a private hugetlb mapping that reads a page the file does not hold gets a zeroed page of its own
  (hugetlb_no_page allocates an anonymous page), which later writes through shared mappings do not
  reach;
* ``madvise(DONTNEED)`` drops private copies; truncation drops the pages past the end, private
  copies included, and the data with them;
* an access outside every mapping or against its protection is a SIGSEGV, one past the end of the
  file a SIGBUS, and either kills the process after the accesses before it.

The simulator must agree with this model on every value read, under every policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..arch import PAGE_SHIFT, PAGE_SIZE
from ..mm.access import write_stamp
from ..mm.pagecache import file_stamp

HPAGE = 2 << 20


@dataclass(eq=False)
class Cell:
    value: int


@dataclass(eq=False)
class RefObject:
    id: int
    kind: str
    size: int
    cells: dict[int, Cell] = field(default_factory=dict)
    data_pages: int = 0

    @property
    def page_size(self) -> int:
        return HPAGE if self.kind == "hugetlb" else PAGE_SIZE

    @property
    def nr_pages(self) -> int:
        return -(-self.size // self.page_size)

    def initial(self, index: int) -> int:
        if self.kind == "file" and index < self.data_pages:
            return int(file_stamp(self.id, np.array([index]))[0])
        return 0

    def cell(self, index: int) -> Cell:
        if index not in self.cells:
            self.cells[index] = Cell(self.initial(index))
        return self.cells[index]


@dataclass(eq=False)
class RefMapping:
    start: int
    end: int
    readable: bool
    writable: bool
    shared: bool
    obj: RefObject | None
    pgoff: int  # file offset of ``start``, in 4 KiB pages
    private: dict[int, Cell] = field(default_factory=dict)  # page offset from the object start -> own page

    def page_key(self, addr: int) -> int:
        """The key of the page holding ``addr``: its file page (4 KiB or huge) or, anonymous, its address."""
        idx = ((addr - self.start) >> PAGE_SHIFT) + self.pgoff
        if self.obj is not None and self.obj.kind == "hugetlb":
            return idx // (HPAGE // PAGE_SIZE)
        return idx

    def split(self, at: int) -> RefMapping:
        """Cut at ``at``; this keeps the low part, the high part is returned."""
        cut = self.page_key(at)
        high = RefMapping(at, self.end, self.readable, self.writable, self.shared, self.obj,
                          self.pgoff + ((at - self.start) >> PAGE_SHIFT),
                          {key: c for key, c in self.private.items() if key >= cut})
        self.private = {key: c for key, c in self.private.items() if key < cut}
        self.end = at
        return high


@dataclass(eq=False)
class RefProcess:
    name: str
    maps: list[RefMapping] = field(default_factory=list)
    alive: bool = True

    def find(self, addr: int) -> RefMapping | None:
        for m in self.maps:
            if m.start <= addr < m.end:
                return m
        return None

    def carve(self, start: int, end: int) -> list[RefMapping]:
        """Split mappings at ``start`` and ``end``; return those inside [start, end)."""
        out = []
        for m in list(self.maps):
            if m.end <= start or m.start >= end:
                continue
            if m.start < start:
                high = m.split(start)
                self.maps.append(high)
                m = high
            if m.end > end:
                self.maps.append(m.split(end))
            out.append(m)
        self.maps.sort(key=lambda m: m.start)
        return out


def _is_huge(m: RefMapping) -> bool:
    return m.obj is not None and m.obj.kind == "hugetlb"


class Reference:
    """The reference model.  Addresses come from the simulator: placement is not what it checks."""

    def __init__(self) -> None:
        self.procs: dict[str, RefProcess] = {}
        self.objects: dict[str, RefObject] = {}
        self.seq = 0

    def create_object(self, name: str, obj_id: int, kind: str, size: int) -> None:
        obj = RefObject(obj_id, kind, size)
        obj.data_pages = obj.nr_pages
        self.objects[name] = obj

    def spawn(self, name: str) -> None:
        self.procs[name] = RefProcess(name)

    def fork(self, parent: str, child: str) -> None:
        p = self.procs[parent]
        self.procs[child] = RefProcess(child, [
            RefMapping(m.start, m.end, m.readable, m.writable, m.shared, m.obj, m.pgoff, dict(m.private))
            for m in p.maps])

    def exec(self, name: str) -> None:
        self.procs[name].maps = []

    def exit(self, name: str) -> None:
        self.procs[name].maps = []
        self.procs[name].alive = False

    def mmap(self, name: str, start: int, length: int, *, obj: str | None, offset: int, shared: bool,
             prot: str) -> None:
        p = self.procs[name]
        self.munmap(name, start, length)
        o = self.objects[obj] if obj is not None else None
        if shared and o is None:
            o = RefObject(-1, "shmem", length)  # shared anonymous memory: an unnamed shmem object
            o.data_pages = 0
        pgoff = offset >> PAGE_SHIFT if o is not None else start >> PAGE_SHIFT
        p.maps.append(RefMapping(start, start + length, "r" in prot, "w" in prot, shared, o, pgoff))
        p.maps.sort(key=lambda m: m.start)

    def munmap(self, name: str, start: int, length: int) -> None:
        p = self.procs[name]
        for m in p.carve(start, start + length):
            p.maps.remove(m)

    def mprotect(self, name: str, start: int, length: int, prot: str) -> None:
        for m in self.procs[name].carve(start, start + length):
            m.readable, m.writable = "r" in prot, "w" in prot

    def madvise_dontneed(self, name: str, start: int, length: int) -> None:
        for m in self.procs[name].carve(start, start + length):
            m.private.clear()

    def mremap(self, name: str, old: int, old_size: int, new_size: int, new: int) -> None:
        """Pages keep their keys (Linux keeps ``vm_pgoff`` when a mapping moves)."""
        p = self.procs[name]
        pieces = p.carve(old, old + old_size)
        m = pieces[0]
        for other in pieces[1:]:  # pieces of one VMA the simulator merged back (same protection)
            m.end = other.end
            m.private.update(other.private)
            p.maps.remove(other)
        if new == old:
            if new_size < old_size:
                self.munmap(name, old + new_size, old_size - new_size)
            else:
                m.end = old + new_size
            return
        p.maps.remove(m)
        self.munmap(name, new, new_size)
        limit = m.page_key(m.start + new_size - 1) + 1
        moved = RefMapping(new, new + new_size, m.readable, m.writable, m.shared, m.obj, m.pgoff,
                           {key: cell for key, cell in m.private.items() if key < limit})
        p.maps.append(moved)
        p.maps.sort(key=lambda x: x.start)

    def truncate(self, obj_name: str, size: int) -> None:
        obj = self.objects[obj_name]
        obj.size = size
        keep = obj.nr_pages
        obj.data_pages = min(obj.data_pages, keep)
        obj.cells = {i: c for i, c in obj.cells.items() if i < keep}
        for p in self.procs.values():
            for m in p.maps:
                if m.obj is obj:
                    m.private = {key: c for key, c in m.private.items() if key < keep}

    def access(self, name: str, addrs: np.ndarray, write: bool) -> tuple[np.ndarray, tuple[str, int] | None]:
        """What each address reached holds once the touch is done (for a write: what it wrote, unless
        a later access of the same touch wrote the same page through another address), and the fatal
        signal if any."""
        p = self.procs[name]
        self.seq += 1
        values = []
        signal = None
        for addr in addrs.tolist():
            m = p.find(addr)
            if m is None or not (m.writable if write else m.readable):
                signal = ("SIGSEGV", addr)
                break
            key = m.page_key(addr)
            if m.obj is not None and key >= m.obj.nr_pages:
                signal = ("SIGBUS", addr)
                break
            hugetlb = m.obj is not None and m.obj.kind == "hugetlb"
            if write:
                base = addr & ~(HPAGE - 1) if hugetlb else addr & ~(PAGE_SIZE - 1)
                stamp = int(write_stamp(self.seq, np.array([base]))[0])
                if m.shared:
                    m.obj.cell(key).value = stamp
                else:
                    m.private[key] = Cell(stamp)
            values.append(addr)
        reached = [self._read(p.find(a), p.find(a).page_key(a), _is_huge(p.find(a))) for a in values]
        if signal is not None:
            self.exit(name)
        return np.array(reached, dtype=np.int64), signal

    def _read(self, m: RefMapping, key: int, hugetlb: bool) -> int:
        if key in m.private:
            return m.private[key].value
        if m.obj is None:
            return 0
        if not m.shared and hugetlb and key not in m.obj.cells:
            m.private[key] = Cell(0)
            return 0
        return m.obj.cell(key).value
