"""The invariant checker: recomputes every count from the page tables and compares.

Run after every operation when a :class:`ptshare.System` is made with ``check=True`` (the tests
do; it is off by default because it walks every table of every process).  A broken invariant
raises :class:`InternalError` with the state that broke it, like the kernel's ``print_bad_pte``.

Checked:

* every present entry lies inside a VMA of its mm; explicit frames only in anonymous or private
  mappings, implicit ones only in file mappings and only on pages the page cache holds;
* writable implies present; the zero page is never writable;
* each anonymous frame's ``mapcount`` equals the entries that map it, over all processes; no
  allocated anonymous frame is unmapped and no freed frame is mapped or cached;
* each page-cache frame belongs to exactly one object;
* each shared table's ``users`` equals the mms whose tables point at it, and its storage refs the
  directory contents that hold it;
* a table shared by key sits only where a VMA covers its whole span, and every user's span has the
  same key by the policy's own hook (:meth:`Policy.share_key`), the key it is registered under; a
  table shared copy-on-write sits only in copy-on-write mappings; only copy-on-write tables hold
  explicit frames, and their pages are counted once per table, not per user -- except a table whose
  pages fork counted for every user (cow-pt), counted per user;
* an mshare region's spans, in every process that maps it under a policy that keeps its tables in
  a host mm, are empty or the host's table -- never a table of the process's own -- and the host uses
  every such table (so that it outlives the processes);
* every content's storage refs equal the references to it;
* each mm's VmPTE counters equal the tables reachable from it;
* the system's PageTables equals the distinct tables of all mms (shared ones once, PGDs included);
* the VMA invariants of :mod:`.vma_checks` (order, anon_vma chains, anonymous pages only in VMAs
  with an anon_vma);
* a copy async-fork left to a child (:mod:`ptshare.mm.asyncfork`) is between two live mms, and
  each span still to copy lies in a VMA of the parent, holds the parent's PMD entry as fork left it
  (a span the parent changed was charged as its copy) and has a PTE table in the child.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from ..arch import (
    E_LEAF,
    E_NONE,
    E_SHARED,
    E_TABLE,
    PAGE_SHIFT,
    PTRS_PER_TABLE,
    entry_tag,
    entry_value,
    leaf_explicit,
    leaf_write,
)
from ..errors import InternalError
from ..mm.frames import HUGE_UNITS, PG_ANON, PG_CACHE, ZERO_PFN
from ..mm.huge_memory import folio_pages, pmd_trans_huge
from ..mm.pagewalk import PMD, PTE, PUD
from ..mm.pagewalk import walk as walk_range
from ..mm.pgtable import COW, COW_COUNTED
from ..mm.vma import VM_WRITE
from .vma_checks import check_vmas

if TYPE_CHECKING:
    from ..mm.kernel import Kernel
    from ..mm.mm_struct import MM, Task
    from ..system import System


class _Walk:
    """Everything reachable from one mm, walked logically (shared tables included)."""

    def __init__(self, k: Kernel, mm: MM) -> None:
        self.k, self.mm = k, mm
        self.tables = Counter()  # level -> tables the mm references (VmPTE levels and above)
        self.shared = Counter()  # (level, sid) -> references from this mm
        self.shared_at: dict[tuple[int, int], int] = {}  # (level, sid) -> address of its span
        self.own_tables = Counter()  # level -> tables not inside a shared table (allocated by / for the mm)
        self.ptes: list[tuple[int, int, int, bool]] = []  # (pte cid, base address, sid or 0, in shared pmd)
        self.leaves: list[tuple[np.ndarray, np.ndarray]] = []  # (addresses, entries) of huge leaves
        top = len(k.geom.levels) - 1
        self._dir(top, mm.pgd, 0, 0, False)

    def _dir(self, lvl: int, cid: int, base: int, in_sid: int, inside_shared: bool) -> None:
        k = self.k
        entries = k.stores[lvl].entries[cid]
        size = k.geom.levels[lvl].entry_size
        for i in np.flatnonzero(entries).tolist():
            e = int(entries[i])
            addr = base + i * size
            tag = entry_tag(e)
            if lvl == PMD and tag == E_LEAF:
                self.leaves.append((np.array([addr]), np.array([e])))
                if pmd_trans_huge(k, np.array([e]))[0]:  # its deposited PTE table is the mm's
                    self.tables[PTE] += 1
                    self.own_tables[PTE] += 1
                continue
            if tag == E_LEAF:
                raise InternalError("huge leaf above the PMD level", level=lvl, addr=hex(addr), entry=hex(e))
            child_lvl = lvl - 1
            self.tables[child_lvl] += 1
            if tag == E_SHARED:
                sid = int(entry_value(e))
                self.shared[(child_lvl, sid)] += 1
                self.shared_at[(child_lvl, sid)] = addr
                child = int(k.shared.content[sid])
                if int(k.shared.level[sid]) != child_lvl:
                    raise InternalError("shared table at the wrong level", sid=sid, level=child_lvl)
                if child_lvl == PTE:
                    self.ptes.append((child, addr, sid, inside_shared))
                else:
                    self._dir(child_lvl, child, addr, sid, True)
            elif tag == E_TABLE:
                child = int(entry_value(e))
                if not inside_shared:
                    self.own_tables[child_lvl] += 1
                if child_lvl == PTE:
                    self.ptes.append((child, addr, 0, inside_shared))
                else:
                    self._dir(child_lvl, child, addr, in_sid, inside_shared)


def _mms(k: Kernel) -> list[Task]:
    """Every live mm: the processes' and the host mms of mshare regions (mm/mshare.py)."""
    return [t for t in k.tasks if t.alive] + [o.host for o in k.objects.values() if o.host is not None]


def check(system: System) -> None:
    k = system.k
    walks = {task.name: _Walk(k, task.mm) for task in _mms(k)}
    mapcount = Counter()
    counted: set[int] = set()  # shared tables whose pages are counted already
    cache_owner: dict[int, str] = {}
    for obj in k.objects.values():
        for pfn in obj.cached_frames().tolist():
            if pfn in cache_owner:
                raise InternalError("frame in two page caches", pfn=pfn, objects=(cache_owner[pfn], obj.name))
            cache_owner[pfn] = obj.name
            if not k.frames.flags[pfn] & PG_CACHE:
                raise InternalError("cached frame without PG_CACHE", pfn=pfn, object=obj.name)
    keys: dict[int, tuple] = {}
    for name, walk in walks.items():
        _check_entries(k, name, walk, mapcount, counted)
        _check_counts(k, name, walk)
        _check_shareable(k, name, walk, keys)
        check_vmas(k, name, walk.mm, walk.ptes)
    _check_frames(k, mapcount, cache_owner)
    _check_shared(k, walks)
    _check_hosts(k)
    _check_storage(k)
    _check_pagetables(k, walks)
    _check_background(k)


def _vma_at(mm: MM, addrs: np.ndarray) -> np.ndarray:
    starts = np.array([v.vm_start for v in mm.vmas] or [0], dtype=np.int64)
    ends = np.array([v.vm_end for v in mm.vmas] or [0], dtype=np.int64)
    which = np.searchsorted(starts, addrs, side="right") - 1
    inside = (which >= 0) & (addrs < ends[np.maximum(which, 0)]) if mm.vmas else np.zeros(len(addrs), bool)
    return np.where(inside, which, -1)


def _check_entries(k: Kernel, name: str, walk: _Walk, mapcount: Counter, counted: set[int]) -> None:
    mm = walk.mm
    pte = k.stores[PTE]
    for cid, base, sid, _inside in walk.ptes:
        # A shared table's pages are mapped once, by the table -- or once per user where fork
        # counted them for every user (COW_COUNTED).
        again = sid in counted and k.shared.mode[sid] != COW_COUNTED
        if sid:
            counted.add(sid)
        present, write, pfn = (a[0] for a in pte.load(np.array([cid])))
        dirty = pte.wp_dirty_of(np.array([cid]))[0]
        if (pte.full[cid] != 0) != bool(present.all()):
            raise InternalError("table's all-present mark disagrees with its entries", process=name,
                                table=hex(base), full=bool(pte.full[cid]))
        if (write & ~present).any():
            raise InternalError("writable entry that is not present", process=name, table=hex(base))
        if (dirty & ~(present & ~write)).any():
            raise InternalError("write-protected dirty mark on an entry that is absent or writable", process=name,
                                table=hex(base))
        if (pfn[~present] != 0).any():
            raise InternalError("frame in an entry that is not present", process=name, table=hex(base))
        idx = np.flatnonzero(present)
        if len(idx) == 0:
            continue
        addrs = base + (idx.astype(np.int64) << PAGE_SHIFT)
        which = _vma_at(mm, addrs)
        if (which < 0).any():
            bad = int(addrs[which < 0][0])
            raise InternalError("present entry outside every VMA", process=name, addr=hex(bad),
                                vmas=mm.vmas[:6])
        f = pfn[idx]
        if ((f == ZERO_PFN) & write[idx]).any():
            raise InternalError("writable zero page", process=name, table=hex(base))
        if sid and k.shared.mode[sid] < COW and (f != 0).any():
            raise InternalError("explicit frame in a shared table that is not copy-on-write", process=name,
                                table=hex(base), sid=sid)
        for v in np.unique(which).tolist():
            vma = mm.vmas[v]
            sel = which == v
            explicit = f[sel] != 0
            if vma.obj is None and not explicit.all():
                raise InternalError("implicit entry in an anonymous VMA", process=name, vma=vma, table=hex(base))
            if vma.obj is not None and vma.is_shared and explicit.any():
                raise InternalError("explicit frame in a shared mapping", process=name, vma=vma, table=hex(base))
            if vma.is_hugetlb:
                raise InternalError("PTE table in a hugetlb VMA", process=name, vma=vma)
            if not vma.vm_flags & VM_WRITE and write[idx][sel].any():
                raise InternalError("writable entry in a VMA without VM_WRITE", process=name, vma=vma)
            if dirty[idx][sel].any() and not vma.wants_writenotify:
                raise InternalError("write-protected dirty entry outside a shared disk-file mapping", process=name,
                                    vma=vma)
            if vma.obj is not None and (~explicit).any():
                file_idx = ((addrs[sel][~explicit] - vma.vm_start) >> PAGE_SHIFT) + vma.vm_pgoff
                cached = vma.obj.find(file_idx)
                if (cached == 0).any():
                    raise InternalError("implicit entry for a page not in the page cache", process=name, vma=vma,
                                        addr=hex(int(addrs[sel][~explicit][cached == 0][0])))
            real = f[sel][f[sel] > ZERO_PFN]
            for p in [] if again else real.tolist():
                mapcount[p] += 1
    for addrs, entries in walk.leaves:
        which = _vma_at(mm, addrs)
        if (which < 0).any():
            raise InternalError("huge leaf outside every VMA", process=name, addr=hex(int(addrs[0])))
        vma = mm.vmas[int(which[0])]
        if not vma.is_hugetlb:
            _check_thp_leaf(k, name, vma, int(addrs[0]), int(entries[0]), mapcount)
            continue
        explicit = leaf_explicit(entries)
        for e in entries[explicit].tolist():
            mapcount[int(entry_value(e))] += 1
        if explicit.any() and vma.is_shared:
            raise InternalError("private huge page in a shared mapping", process=name, vma=vma)
        if (~explicit).any():
            hidx = (vma.linear_page_index(int(addrs[0])) >> 9)
            if vma.obj.find(np.array([hidx]))[0] == 0:
                raise InternalError("huge leaf for a page not in the page cache", process=name, vma=vma)


def _check_thp_leaf(k: Kernel, name: str, vma, addr: int, entry: int, mapcount: Counter) -> None:
    """A huge PMD outside hugetlb maps a whole transparent huge page (or the huge zero page, read
    only) of a private anonymous VMA that covers its 2 MiB whole; each of its pages is mapped once."""
    e = np.array([entry])
    if not pmd_trans_huge(k, e)[0]:
        raise InternalError("huge leaf in a VMA that is not hugetlb maps no transparent huge page", process=name,
                            vma=vma, addr=hex(addr), entry=hex(entry))
    if not vma.is_anonymous or vma.is_shared or addr < vma.vm_start or addr + k.geom.pmd_size > vma.vm_end:
        raise InternalError("huge PMD in a VMA that cannot hold it whole", process=name, vma=vma, addr=hex(addr))
    head = int(entry_value(entry))
    writable = bool(leaf_write(e)[0])
    if writable and (head == ZERO_PFN or not vma.vm_flags & VM_WRITE):
        raise InternalError("writable huge PMD of the huge zero page or in a VMA without VM_WRITE", process=name,
                            vma=vma, addr=hex(addr))
    if head != ZERO_PFN:
        if head % HUGE_UNITS:
            raise InternalError("huge PMD whose frame is not a folio's head", process=name, addr=hex(addr), pfn=head)
        mapcount.update(folio_pages(np.array([head])).tolist())


def _check_shareable(k: Kernel, name: str, walk: _Walk, keys: dict[int, tuple]) -> None:
    """A shared table sits only where a VMA that may share it covers its whole span: one shared by
    key where every user's span has the same key, by the policy's hook, as the one it is registered
    under; one shared copy-on-write at fork in a copy-on-write mapping."""
    from ..mm.ptshare import registry_slot

    mm = walk.mm
    for (lvl, sid), _n in walk.shared.items():
        base = _shared_base(k, walk, lvl, sid)
        span = k.geom.levels[lvl].span
        vma = mm.vma_lookup(base)
        if vma is None or not (vma.vm_start <= base and base + span <= vma.vm_end):
            raise InternalError("shared table where no VMA covers its span", process=name, level=lvl, sid=sid,
                                addr=hex(base), vma=vma)
        registered = k.share_where.get(sid)
        if registered is None:
            if not (k.shared.mode[sid] >= COW and lvl == PTE and vma.is_cow_mapping):
                raise InternalError("shared table neither registered under a key nor copy-on-write", process=name,
                                    level=lvl, sid=sid, addr=hex(base), vma=vma)
            continue
        key = k.policy.share_key(lvl, vma)
        if key is None:
            raise InternalError("shared table in a VMA the policy does not share", process=name, level=lvl,
                                sid=sid, addr=hex(base), vma=vma)
        mine = (key.identity, base - key.origin)
        if keys.setdefault(sid, mine) != mine:
            raise InternalError("users of a shared table have different keys", process=name, level=lvl, sid=sid,
                                addr=hex(base), key=mine, other=keys[sid])
        where, slot = registered
        mine_where, mine_slot = registry_slot(k, lvl, key, base)
        # What the table maps cannot change while it is shared; the partner it is found by can
        # (a user's VMA split away from the span keeps sharing it).
        if (where[:2], where[3], slot) != (mine_where[:2], mine_where[3], mine_slot):
            raise InternalError("shared table registered under another key", process=name, level=lvl, sid=sid,
                                key=mine, registered=registered)


def _shared_base(k: Kernel, walk: _Walk, lvl: int, sid: int) -> int:
    for _cid, base, box, _inside in walk.ptes:
        if box == sid:
            return base
    return walk.shared_at[(lvl, sid)]


def _check_counts(k: Kernel, name: str, walk: _Walk) -> None:
    from ..mm.ptshare import vmpte_tables

    mm = walk.mm
    reachable = walk.tables[PTE] + walk.tables[PMD] + walk.tables[PUD]
    if reachable != vmpte_tables(k, mm):
        raise InternalError("VmPTE counters disagree with the tables reachable", process=name,
                            reachable={"pte": walk.tables[PTE], "pmd": walk.tables[PMD], "pud": walk.tables[PUD]},
                            counters={"pte": mm.nr_ptes, "pmd": mm.nr_pmds, "pud": mm.nr_puds,
                                      "in shared pmds": vmpte_tables(k, mm) - mm.nr_ptes - mm.nr_pmds - mm.nr_puds})
    attached = sum(n for (lvl, sid), n in walk.shared.items() if int(k.shared.owner[sid]) != mm.id)
    if attached != mm.nr_shared:
        raise InternalError("VmSHPT disagrees with the tables attached", process=name, attached=attached,
                            nr_shared=mm.nr_shared)


def _check_frames(k: Kernel, mapcount: Counter, cache_owner: dict[int, str]) -> None:
    frames = k.frames
    flags = frames.flags[:frames.end]
    anon = np.flatnonzero((flags & PG_ANON) != 0)
    for pfn in anon.tolist():
        if frames.mapcount[pfn] != mapcount.get(pfn, 0):
            raise InternalError("anonymous frame's mapcount disagrees with the page tables", pfn=pfn,
                                mapcount=int(frames.mapcount[pfn]), mapped=mapcount.get(pfn, 0))
        if frames.mapcount[pfn] == 0:
            raise InternalError("anonymous frame allocated but mapped nowhere (leak)", pfn=pfn)
    for pfn in mapcount:
        if not flags[pfn] & PG_ANON:
            raise InternalError("mapped explicit frame that is not an allocated anonymous page", pfn=pfn,
                                flags=int(flags[pfn]))
    cached = np.flatnonzero((flags & PG_CACHE) != 0)
    for pfn in cached.tolist():
        if pfn not in cache_owner:
            raise InternalError("page-cache frame that no object holds (leak)", pfn=pfn)
    units = int(((flags & (PG_ANON | PG_CACHE)) != 0).sum())
    from ..mm.frames import HUGE_UNITS, PG_HUGE

    huge = int((((flags & (PG_ANON | PG_CACHE)) != 0) & ((flags & PG_HUGE) != 0)).sum())
    if units + huge * (HUGE_UNITS - 1) != frames.nr_units:
        raise InternalError("frames in use disagree with the frame table", counted=units, nr_units=frames.nr_units)


def _check_shared(k: Kernel, walks: dict[str, _Walk]) -> None:
    users = Counter()
    for walk in walks.values():
        for (_lvl, sid), n in walk.shared.items():
            if n != 1:
                raise InternalError("an mm points at one shared table twice", process=walk.mm.id, sid=sid)
            users[sid] += 1
    live = [sid for sid in range(1, k.shared._next) if sid not in k.shared._free]
    for sid in live:
        if int(k.shared.users[sid]) != users.get(sid, 0):
            raise InternalError("shared table's user count disagrees with the mms using it", sid=sid,
                                users=int(k.shared.users[sid]), using=users.get(sid, 0))


def _check_hosts(k: Kernel) -> None:
    """The tables of mshare regions, where the policy keeps them in a host mm (mm/mshare.py)."""
    for lvl in k.policy.host_levels:
        dlvl = lvl + 1
        span, shift = k.geom.levels[lvl].span, k.geom.levels[dlvl].shift
        for task in k.tasks:
            if not task.alive:
                continue
            for vma in task.mm.vmas:
                if vma.obj is None or not vma.obj.is_mshare:
                    continue
                host = vma.obj.host
                for directory in walk_range(k, task.mm, vma.vm_start, vma.vm_end, dlvl, write=False):
                    for base in range(directory.start, directory.end, span):
                        entry = int(k.stores[dlvl].entries[directory.cid, (base >> shift) & (PTRS_PER_TABLE - 1)])
                        tag = entry_tag(entry)
                        if tag == E_SHARED and host is not None \
                                and int(k.shared.owner[int(entry_value(entry))]) == host.mm.id:
                            continue
                        if tag != E_NONE:
                            raise InternalError("an mshare region's span is not mapped through its host's table",
                                                process=task.name, addr=hex(base), entry=hex(entry),
                                                host=None if host is None else host.mm.id)
    for obj in k.objects.values():
        if obj.host is None:
            continue
        for sid in obj.host.mm.boxes:
            if int(k.shared.owner[sid]) != obj.host.mm.id:
                raise InternalError("a host mm uses a table it does not hold", object=obj.name, sid=sid)


def _check_storage(k: Kernel) -> None:
    refs = [Counter() for _ in k.stores]
    box_refs = Counter()
    for task in _mms(k):
        refs[-1][task.mm.pgd] += 1
    live_boxes = [sid for sid in range(1, k.shared._next) if sid not in k.shared._free]
    for sid in live_boxes:
        if k.shared.content[sid]:
            refs[int(k.shared.level[sid])][int(k.shared.content[sid])] += 1
    for lvl in range(1, len(k.stores)):
        store = k.stores[lvl]
        free = set(store._free)
        for cid in range(1, store._next):
            if cid in free:
                continue
            entries = store.entries[cid]
            tags = entry_tag(entries)
            for child in entry_value(entries[tags == E_TABLE]).tolist():
                refs[lvl - 1][child] += 1
            for sid in entry_value(entries[tags == E_SHARED]).tolist():
                box_refs[sid] += 1
    for lvl, store in enumerate(k.stores):
        free = set(store._free)
        for cid in range(1, store._next):
            want = refs[lvl].get(cid, 0)
            if cid in free:
                if want:
                    raise InternalError("freed table contents still referenced", level=lvl, cid=cid, refs=want)
                continue
            if int(store.refs[cid]) != want:
                raise InternalError("storage refs disagree with references", level=lvl, cid=cid,
                                    refs=int(store.refs[cid]), referenced=want)
    for sid in live_boxes:
        if int(k.shared.refs[sid]) != box_refs.get(sid, 0):
            raise InternalError("shared table's storage refs disagree", sid=sid, refs=int(k.shared.refs[sid]),
                                referenced=box_refs.get(sid, 0))


def _check_pagetables(k: Kernel, walks: dict[str, _Walk]) -> None:
    own = 0
    for walk in walks.values():
        own += 1 + sum(walk.own_tables.values())  # its PGD and the tables not inside shared ones
    live_boxes = [sid for sid in range(1, k.shared._next) if sid not in k.shared._free]
    boxes = sum(1 + int(k.shared.children[sid].sum()) for sid in live_boxes if k.shared.users[sid] > 0)
    if own + boxes != k.frames.nr_pagetables:
        raise InternalError("PageTables disagrees with the tables of all processes", counted=own + boxes,
                            own=own, shared=boxes, nr_pagetables=k.frames.nr_pagetables)


def check_empty(system: System) -> None:
    """After every process exited and every object was dropped: nothing may be left."""
    k = system.k
    left = {
        "data frames (4 KiB units)": k.frames.nr_units,
        "page-table pages": k.frames.nr_pagetables,
        "shared tables": k.shared.nr_live,
        **{f"level {i} contents": s.nr_live for i, s in enumerate(k.stores)},
    }
    left = {key: v for key, v in left.items() if v}
    if left:
        raise InternalError("something was left after every process exited", **left)


def _check_background(k: Kernel) -> None:
    from ..mm.asyncfork import changed_spans, pmd_entries

    for pending in k.background:
        if pending.parent.dead or pending.child.dead:
            raise InternalError("async-fork copy pending for an mm that is gone", parent=pending.parent.id,
                                child=pending.child.id)
        if (pending.ptes < 0).any() or (pending.rest < 0).any():
            raise InternalError("async-fork copy pending with negative work", parent=pending.parent.id)
        changed = changed_spans(k, pending)
        if changed.any():
            raise InternalError("async-fork: a span the parent changed is still pending",
                                spans=[hex(a) for a in pending.addrs[changed][:4].tolist()])
        ends = np.array([v.vm_end for v in pending.parent.vmas], dtype=np.int64)
        starts = np.array([v.vm_start for v in pending.parent.vmas], dtype=np.int64)
        first = np.minimum(np.searchsorted(ends, pending.addrs, side="right"), max(len(ends) - 1, 0))
        outside = (ends[first] <= pending.addrs) | (starts[first] >= pending.addrs + k.geom.pmd_size) \
            if len(ends) else np.ones(len(pending.addrs), bool)
        if outside.any():
            raise InternalError("async-fork: a pending span outside the parent's VMAs",
                                spans=[hex(a) for a in pending.addrs[outside][:4].tolist()])
        missing = entry_tag(pmd_entries(k, pending.child, pending.addrs)) != E_TABLE
        if missing.any():
            raise InternalError("async-fork: the child has no PTE table for a span it is to copy",
                                spans=[hex(a) for a in pending.addrs[missing][:4].tolist()], child=pending.child.id)
