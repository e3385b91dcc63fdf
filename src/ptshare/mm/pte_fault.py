"""Page-level faults in PTE tables: models do_anonymous_page(), do_read_fault() with
do_fault_around(), do_shared_fault(), do_cow_fault() and do_wp_page() (mm/memory.c).

:class:`PteFaults` takes the contents of the PTE tables a touch reaches (loaded as arrays: present,
writable, explicit frame per entry) and the accesses, in order, and applies the faults Linux would
take one at a time.  It changes the arrays and the frame table; the caller stores the arrays back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..arch import PAGE_SHIFT, PTRS_PER_TABLE
from .access import write_stamp
from .frames import PG_ANON, PG_EXCLUSIVE, ZERO_PFN
from .rmap import anon_vma_prepare
from .vma import VMA

if TYPE_CHECKING:
    from .kernel import Kernel


class PteFaults:
    """The faults of one touch in a set of PTE tables of one VMA.

    ``span_addr``, ``vs``, ``ve``: each table's address and the entries [vs, ve) the VMA covers;
    ``P``, ``W``, ``PFN``: the tables' present and writable masks and explicit frames (bool and
    int64 arrays of shape [tables, 512]); ``inv``, ``ent``, ``addrs``: the accesses in order, as
    (table, entry) pairs and addresses.  ``progression``: the accesses are distinct and in address
    order (a sequential touch), so no de-duplication is needed.
    """

    def __init__(self, k: Kernel, vma: VMA, span_addr: np.ndarray, vs: np.ndarray, ve: np.ndarray,
                 P: np.ndarray, W: np.ndarray, PFN: np.ndarray, inv: np.ndarray, ent: np.ndarray,
                 addrs: np.ndarray, progression: bool, write: bool) -> None:
        self.k, self.vma = k, vma
        self.span_addr, self.vs, self.ve = span_addr, vs, ve
        self.P, self.W, self.PFN = P, W, PFN
        self.inv, self.ent, self.addrs = inv, ent, addrs
        self.progression = progression
        self.write = write
        self.js = span_addr  # one row per table

    def run(self) -> int:
        """Take the faults; returns how many (min_flt)."""
        if self.vma.is_anonymous:
            return self._anon_write() if self.write else self._anon_read()
        if self.write:
            return self._file_write_shared() if self.vma.is_shared else self._file_write_private()
        return self._file_read()

    # helpers --------------------------------------------------------------------------------

    def _distinct(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Distinct (span, entry) pairs accessed, in order of first access, and their addresses."""
        if self.progression:
            return self.inv, self.ent, self.addrs
        key = self.inv * PTRS_PER_TABLE + self.ent
        _, first = np.unique(key, return_index=True)
        first.sort()
        return self.inv[first], self.ent[first], self.addrs[first]

    def _file_index(self, sp: np.ndarray, ent: np.ndarray) -> np.ndarray:
        vma = self.vma
        return ((self.span_addr[sp] - vma.vm_start) >> PAGE_SHIFT) + vma.vm_pgoff + ent

    def _cache_fill(self, sp: np.ndarray, ent: np.ndarray) -> np.ndarray:
        """Bring the file pages at (sp, ent) into the page cache; returns their frames."""
        obj = self.vma.obj
        idx = self._file_index(sp, ent)
        pfns = obj.find(idx)
        missing = pfns == 0
        if missing.any():
            got = self.k.frames.alloc(int(missing.sum()), obj.page_flags, obj.initial_stamps(idx[missing]))
            obj.add(idx[missing], got)
            pfns[missing] = got
            self.k.events.add("page_alloc", len(got))
            if obj.is_shmem:
                self.k.events.add("page_zeroed", len(got))
        return pfns

    def _alloc_anon(self, n: int, stamps: np.ndarray | int = 0) -> np.ndarray:
        anon_vma_prepare(self.vma)
        pfns = self.k.frames.alloc(n, PG_ANON | PG_EXCLUSIVE, stamps)
        self.k.frames.mapcount[pfns] = 1
        self.k.events.add("page_alloc", n)
        self.k.events.add("page_zeroed", n)
        return pfns

    # anonymous memory -----------------------------------------------------------------------

    def _anon_read(self) -> int:
        miss = ~self.P[self.inv, self.ent]
        if not miss.any():
            return 0
        key = np.unique(self.inv[miss] * PTRS_PER_TABLE + self.ent[miss])
        sp, ent = key // PTRS_PER_TABLE, key % PTRS_PER_TABLE
        self.P[sp, ent] = True
        self.W[sp, ent] = False
        self.PFN[sp, ent] = ZERO_PFN
        self.k.events.add("fault_zero", len(key))
        return len(key)

    def _stamp(self, pfns: np.ndarray, addrs: np.ndarray) -> None:
        """What the write leaves in the pages it reached."""
        self.k.frames.stamp[pfns] = write_stamp(self.k.write_seq, addrs)

    def _anon_write(self) -> int:
        k = self.k
        sp, ent, addrs = self._distinct()
        present, writable, pfn = self.P[sp, ent], self.W[sp, ent], self.PFN[sp, ent]
        absent = ~present
        ro = present & ~writable
        zero = ro & (pfn == ZERO_PFN)
        anon = ro & (pfn > ZERO_PFN)
        reuse = anon & (k.frames.mapcount[np.where(anon, pfn, 0)] == 1)
        copy = anon & ~reuse
        fresh = absent | zero | copy
        src = np.where(copy, pfn, 0)  # the zero page and fresh pages start zeroed
        self._write_private(sp, ent, addrs, pfn, src, fresh, copy, reuse)
        k.events.add("fault_anon", int(absent.sum()))
        k.events.add("fault_wp_copy", int((zero | copy).sum()))
        k.events.add("fault_wp_reuse", int(reuse.sum()))
        return int((absent | ro).sum())

    def _write_private(self, sp: np.ndarray, ent: np.ndarray, addrs: np.ndarray, pfn: np.ndarray, src: np.ndarray,
                       fresh: np.ndarray, copied: np.ndarray, reuse: np.ndarray) -> None:
        """The end of every private write: new pages (copies of ``src``, or zeroed where it is 0)
        where ``fresh``, one mapping fewer for the anonymous pages ``copied`` away from, reused
        pages marked exclusive, every entry present and writable, and the write stored."""
        k = self.k
        if fresh.any():
            got = self._alloc_anon(int(fresh.sum()), np.where(src[fresh] > 0, k.frames.stamp[src[fresh]], 0))
            k.frames.mapcount[pfn[copied]] -= 1
            pfn = pfn.copy()
            pfn[fresh] = got
        k.frames.flags[pfn[reuse]] |= PG_EXCLUSIVE
        self.P[sp, ent] = True
        self.W[sp, ent] = True
        self.PFN[sp, ent] = pfn
        self._stamp(pfn, addrs)

    # file and shmem mappings ----------------------------------------------------------------

    def _file_read(self) -> int:
        """do_read_fault() with do_fault_around(), in access order."""
        k, vma = self.k, self.vma
        nr = k.policy.fault_around_pages
        miss = ~self.P[self.inv, self.ent]
        if not miss.any():
            return 0
        msp, ment = self.inv[miss], self.ent[miss]
        n = len(self.js)
        col = np.arange(PTRS_PER_TABLE)
        in_vma = (col >= self.vs[:, None]) & (col < self.ve[:, None])
        idx = ((self.span_addr - vma.vm_start) >> PAGE_SHIFT)[:, None] + vma.vm_pgoff + col
        valid = in_vma & (idx >= 0) & (idx < vma.obj.nr_pages)
        if vma.obj.nr_cached == vma.obj.nr_pages:
            cached = valid
        else:
            cached = np.zeros((n, PTRS_PER_TABLE), dtype=bool)
            cached[valid] = vma.obj.pages[idx[valid]] != 0
        before = self.P.copy()
        head = np.zeros(len(msp), dtype=bool)
        if nr > 1:
            align_up = -(-self.vs // nr) * nr
            head = (self.vs[msp] % nr != 0) & (ment < (align_up + nr)[msp])
        if cached[msp, ment].all():
            faults = self._all_cached(msp[~head], ment[~head], cached, in_vma, nr)
        else:
            faults = self._in_order(msp[~head], ment[~head], cached, in_vma, nr)
        if head.any():
            hsp, hent = _first_seen(msp[head], ment[head])
            faults += self._fault_around_exact(hsp, hent, cached, nr)
        newly = self.P & ~before
        self.W[newly] = vma.pte_writable()
        self.PFN[newly] = 0
        k.events.add("fault_file", faults)
        k.events.add("fault_around_ptes", int(newly.sum()) - faults)
        return faults

    def _all_cached(self, sp: np.ndarray, ent: np.ndarray, cached: np.ndarray, in_vma: np.ndarray,
                    nr: int) -> int:
        """Every page missed is in the page cache: each window missed in faults once and maps
        every page of it, whatever the order -- so no ordering is needed."""
        if len(sp) == 0:
            return 0
        blocks = PTRS_PER_TABLE // nr
        hit = np.zeros((len(self.js), blocks), dtype=bool)
        hit[sp, ent // nr] = True
        self.P |= np.repeat(hit, nr, axis=1) & cached & in_vma
        return int(hit.sum())

    def _in_order(self, sp: np.ndarray, ent: np.ndarray, cached: np.ndarray, in_vma: np.ndarray, nr: int) -> int:
        """Some pages come from disk: faults depend on which page of a window is missed first."""
        fsp, fent = _first_seen(sp, ent)
        if nr <= 1:
            self._map_file(fsp, fent, cached)
            return len(fsp)
        return self._fault_around_blocks(fsp, fent, cached, in_vma, nr)

    def _map_file(self, sp: np.ndarray, ent: np.ndarray, cached: np.ndarray) -> None:
        """Map the faulting pages themselves, reading uncached ones into the page cache."""
        if len(sp) == 0:
            return
        uncached = ~cached[sp, ent]
        if uncached.any():
            self._cache_fill(sp[uncached], ent[uncached])
            cached[sp[uncached], ent[uncached]] = True
        self.P[sp, ent] = True

    def _fault_around_blocks(self, sp: np.ndarray, ent: np.ndarray, cached: np.ndarray,
                             in_vma: np.ndarray, nr: int) -> int:
        """Faults on aligned fault-around windows: the first miss in a window maps every cached
        page of it; later misses in the window fault only on pages that were not cached."""
        if len(sp) == 0:
            return 0
        blocks = PTRS_PER_TABLE // nr
        bkey = sp * blocks + ent // nr
        ukeys, first = np.unique(bkey, return_index=True)
        first_uncached = ~cached[sp[first], ent[first]]
        uncached = ~cached[sp, ent]
        faults = len(ukeys) + int(uncached.sum()) - int(first_uncached.sum())
        hit = np.zeros((len(self.js), blocks), dtype=bool)
        hit[ukeys // blocks, ukeys % blocks] = True
        window = np.repeat(hit, nr, axis=1) & cached & in_vma
        self.P |= window
        self._map_file(sp, ent, cached)
        return faults

    def _fault_around_exact(self, sp: np.ndarray, ent: np.ndarray, cached: np.ndarray, nr: int) -> int:
        """The windows at the VMA's start, which do_fault_around shifts to begin at vm_start."""
        faults = 0
        for j, e in zip(sp.tolist(), ent.tolist(), strict=True):
            if self.P[j, e]:
                continue
            faults += 1
            lo = max(e - e % nr, int(self.vs[j]))
            hi = min(lo + nr, PTRS_PER_TABLE, int(self.ve[j]))
            self.P[j, lo:hi] |= cached[j, lo:hi]
            if not self.P[j, e]:
                self._map_file(np.array([j]), np.array([e]), cached)
        return faults

    def _file_write_shared(self) -> int:
        """do_shared_fault() for absent pages, page_mkwrite for write-protected ones."""
        sp, ent, addrs = self._distinct()
        present, writable = self.P[sp, ent], self.W[sp, ent]
        absent = ~present
        self._stamp(self._cache_fill(sp, ent), addrs)
        self.P[sp, ent] = True
        self.W[sp, ent] = True
        self.PFN[sp, ent] = 0
        self.k.events.add("fault_shared_write", int(absent.sum()))
        self.k.events.add("fault_wp_shared", int((present & ~writable).sum()))
        return int((~(present & writable)).sum())

    def _file_write_private(self) -> int:
        """do_cow_fault() for absent pages, do_wp_page() for write-protected ones."""
        k = self.k
        sp, ent, addrs = self._distinct()
        present, writable, pfn = self.P[sp, ent], self.W[sp, ent], self.PFN[sp, ent]
        explicit = pfn > ZERO_PFN
        ro = present & ~writable
        reuse = ro & explicit & (k.frames.mapcount[np.where(explicit, pfn, 0)] == 1)
        copy_anon = ro & explicit & ~reuse
        copy_file = ro & ~explicit
        absent = ~present
        fresh = copy_anon | copy_file | absent
        src = pfn.copy()
        from_file = copy_file | absent
        if from_file.any():
            src[from_file] = self._cache_fill(sp[from_file], ent[from_file])
        self._write_private(sp, ent, addrs, pfn, src, fresh, copy_anon, reuse)
        k.events.add("fault_cow", int(absent.sum()))
        k.events.add("fault_wp_copy", int((copy_anon | copy_file).sum()))
        k.events.add("fault_wp_reuse", int(reuse.sum()))
        return int((absent | ro).sum())


def _first_seen(sp: np.ndarray, ent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (table, entry) pairs in the order they are first accessed."""
    _, first = np.unique(sp * PTRS_PER_TABLE + ent, return_index=True)
    first.sort()
    return sp[first], ent[first]
