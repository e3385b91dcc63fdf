"""Storage of page-table contents: one store per level, and the table of shared tables.

The simulated tables are values.  A table's *contents* live in a store under an integer id with a
storage reference count (``refs``): the number of directory entries, shared tables and mm roots
that point at it.  Two processes whose tables hold equal contents may point at the same id; a
table is copied only when one of them changes it (:meth:`_Store.cow`).  This is the simulator's
own copy-on-write, invisible to the model: every process still *has* its own table, and the
kernel-visible counts (``nr_ptes``, ``NR_PAGETABLE``, ``mapcount``) are kept by the operations, not
derived from storage.

A *shared* table is different: it is one physical table that several mms' directory entries point
at (hugetlb PMD sharing; McCracken's shared PTE tables).  Its share count lives in
:class:`SharedTables` (``pt_share_count``), separate from storage refs and from page mapcounts.
A fault that fills an entry of a shared table is seen by every sharer.
"""

from __future__ import annotations

import numpy as np

from ..arch import (
    E_SHARED,
    E_TABLE,
    MASK_BYTES,
    PTRS_PER_TABLE,
    bitmap_pack,
    bitmap_unpack,
    bitmap_weight,
    entry_tag,
    entry_value,
)


def lazy_zeros(shape: tuple[int, ...], dtype: type, fallback: tuple[int, ...]) -> np.ndarray:
    """A zeroed array reserved large: numpy's zeroed allocations are lazy (calloc), so untouched
    rows cost no memory and the array never has to be copied to grow.  Where the system refuses
    the reservation, start at ``fallback`` and grow by copying."""
    try:
        return np.zeros(shape, dtype=dtype)
    except MemoryError:
        return np.zeros(fallback, dtype=dtype)


def _grown(array: np.ndarray, capacity: int, fill: int = 0) -> np.ndarray:
    new = np.full((capacity, *array.shape[1:]), fill, dtype=array.dtype)
    new[: len(array)] = array
    return new


class _Store:
    """Ids, storage refs and a free list; subclasses add the columns that hold contents."""

    _columns: tuple[tuple[str, int], ...] = ()  # (attribute, fill value)

    def __init__(self) -> None:
        self.refs = np.zeros(64, dtype=np.int64)
        self._next = 1  # id 0 is never used
        self._free: list[int] = []
        self.nr_live = 0

    def _alloc_ids(self, n: int) -> np.ndarray:
        reuse = min(n, len(self._free))
        ids = self._free[len(self._free) - reuse:]
        del self._free[len(self._free) - reuse:]
        fresh = n - reuse
        if fresh:
            start = self._next
            self._next += fresh
            if self._next > len(self.refs):
                capacity = max(self._next, 2 * len(self.refs))
                self.refs = _grown(self.refs, capacity)
                for name, fill in self._columns:
                    setattr(self, name, _grown(getattr(self, name), capacity, fill))
            ids.extend(range(start, start + fresh))
        self.nr_live += n
        return np.asarray(ids, dtype=np.int64)

    def get(self, ids: np.ndarray | int, count: int = 1) -> None:
        """Take ``count`` more storage references on each id (duplicates counted)."""
        np.add.at(self.refs, np.asarray(ids, dtype=np.int64), count)

    def put(self, ids: np.ndarray | int) -> None:
        """Drop one storage reference per id (duplicates counted); release contents at zero."""
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        if len(ids) == 0:
            return
        np.subtract.at(self.refs, ids, 1)
        dead = np.unique(ids[self.refs[ids] == 0])
        if len(dead):
            self._release(dead)
            self._free.extend(dead.tolist())
            self.nr_live -= len(dead)

    def _release(self, ids: np.ndarray) -> None:
        """Drop whatever the dead contents referenced."""


class PteStore(_Store):
    """Contents of PTE tables: present and writable masks, and explicit frames where any.

    ``row[id]`` indexes ``pfn`` (a 512-entry row of explicit frame numbers: anonymous, zero or
    private-copy pages) or is 0 when every present entry maps its file page implicitly (row 0 of
    ``pfn`` is never used).

    The dirty bit is kept only where the write bit does not imply it: ``wp_dirty[id]`` (packed)
    marks entries that are dirty but write-protected, as mprotect leaves the PTEs of a shared
    disk-file mapping it makes read-only (a writable entry of such a mapping is always dirty:
    only a write fault makes it writable).  Linux makes those writable again at once when write
    permission comes back (``can_change_pte_writable()``: ``pte_dirty``).  Few tables ever have
    such entries, so the mask is a dict; it never outlives the entries (:meth:`store` keeps it a
    subset of present and not writable).

    ``full[id]`` (1 or 0) says whether every entry is present, kept with the present mask wherever it is
    written, so that a read of whole tables finds those with nothing to fault in from one byte
    per table instead of their 64-byte masks.
    """

    _columns = (("present", 0), ("write", 0), ("row", 0), ("full", 0))
    RESERVE = 1 << 24  # contents reserved lazily: 16 million PTE tables

    def __init__(self) -> None:
        super().__init__()
        self.present = lazy_zeros((self.RESERVE, MASK_BYTES), np.uint8, (64, MASK_BYTES))
        self.write = lazy_zeros((self.RESERVE, MASK_BYTES), np.uint8, (64, MASK_BYTES))
        self.refs = lazy_zeros((len(self.present),), np.int64, (64,))
        self.row = lazy_zeros((len(self.present),), np.int64, (64,))
        # int32, not bool: at 64 MiB the reservation is always mapped lazily, where a 16 MiB one
        # may be served from the heap and zeroed at once by each new store
        self.full = lazy_zeros((len(self.present),), np.int32, (64,))
        self.pfn = np.zeros((64, PTRS_PER_TABLE), dtype=np.int64)
        self._rows_next = 1
        self._rows_free: list[int] = []
        self.wp_dirty: dict[int, np.ndarray] = {}

    def new(self, present: np.ndarray, write: np.ndarray, pfn: np.ndarray | None, refs: int = 1) -> np.ndarray:
        """Store ``n`` new contents (bool[n, 512] masks, int64[n, 512] frames or None)."""
        n = len(present)
        ids = self._alloc_ids(n)
        self._set_present(ids, bitmap_pack(present))
        self.write[ids] = bitmap_pack(write)
        self.row[ids] = 0
        if pfn is not None:
            has = np.flatnonzero(pfn.any(axis=1))
            if len(has):
                rows = self._alloc_rows(len(has))
                self.pfn[rows] = pfn[has]
                self.row[ids[has]] = rows
        self.refs[ids] = refs
        return ids

    def new_packed(self, present: np.ndarray, write: np.ndarray) -> np.ndarray:
        """Store contents given as packed masks (uint8[n, 64]) with no explicit frame."""
        ids = self._alloc_ids(len(present))
        self._set_present(ids, present)
        self.write[ids] = write
        self.row[ids] = 0
        self.refs[ids] = 1
        return ids

    def store_packed(self, ids: np.ndarray, present: np.ndarray, write: np.ndarray) -> None:
        """Overwrite the masks of contents held by the caller alone; their frames stay as they are."""
        self._set_present(ids, present)
        self.write[ids] = write
        self._trim_wp_dirty(ids)

    def _set_present(self, ids: np.ndarray, packed: np.ndarray) -> None:
        """The one place present masks are written: ``full`` follows them."""
        self.present[ids] = packed
        self.full[ids] = packed.min(axis=1, initial=0xFF) == 0xFF

    def has_wp_dirty(self, ids: np.ndarray) -> np.ndarray:
        """bool[n]: whether each content has dirty, write-protected entries (one pass over the
        few marked contents, not a lookup per id)."""
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        if not self.wp_dirty:
            return np.zeros(len(ids), dtype=bool)
        return np.isin(ids, np.fromiter(self.wp_dirty, dtype=np.int64, count=len(self.wp_dirty)))

    def _trim_wp_dirty(self, ids: np.ndarray) -> None:
        """Keep ``wp_dirty`` to entries still present and write-protected (a zap clears the
        dirty bit with the entry; a write fault makes it writable)."""
        if not self.wp_dirty:
            return
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        for cid in np.unique(ids[self.has_wp_dirty(ids)]).tolist():
            mask = self.wp_dirty[cid]
            mask &= self.present[cid] & ~self.write[cid]
            if not mask.any():
                del self.wp_dirty[cid]

    def mark_wp_dirty(self, cid: int, packed: np.ndarray) -> None:
        """Entries of ``cid`` (held by the caller alone) that are dirty and now write-protected."""
        mask = packed & self.present[cid] & ~self.write[cid]
        if mask.any():
            old = self.wp_dirty.get(cid)
            self.wp_dirty[cid] = mask if old is None else old | mask

    def wp_dirty_of(self, cids: np.ndarray) -> np.ndarray:
        """bool[n, 512]: the dirty, write-protected entries of each content."""
        cids = np.asarray(cids, dtype=np.int64)
        out = np.zeros((len(cids), MASK_BYTES), dtype=np.uint8)
        for cid in np.unique(cids[self.has_wp_dirty(cids)]).tolist():
            out[cids == cid] = self.wp_dirty[cid]
        return bitmap_unpack(out)

    def _alloc_rows(self, n: int) -> np.ndarray:
        reuse = min(n, len(self._rows_free))
        rows = [self._rows_free.pop() for _ in range(reuse)]
        fresh = n - reuse
        if fresh:
            start = self._rows_next
            self._rows_next += fresh
            if self._rows_next > len(self.pfn):
                self.pfn = _grown(self.pfn, max(self._rows_next, 2 * len(self.pfn)))
            rows.extend(range(start, start + fresh))
        return np.asarray(rows, dtype=np.int64)

    def _release(self, ids: np.ndarray) -> None:
        if self.wp_dirty:
            for cid in ids[self.has_wp_dirty(ids)].tolist():
                del self.wp_dirty[cid]
        rows = self.row[ids]
        rows = rows[rows > 0]
        self._rows_free.extend(rows.tolist())
        self.pfn[rows] = 0
        self.row[ids] = 0

    def load(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(present bool[n,512], write bool[n,512], pfn int64[n,512]) of the contents ``ids``."""
        ids = np.asarray(ids, dtype=np.int64)
        present = bitmap_unpack(self.present[ids])
        write = bitmap_unpack(self.write[ids])
        pfn = np.zeros((len(ids), PTRS_PER_TABLE), dtype=np.int64)
        rows = self.row[ids]
        has = rows > 0
        if has.any():
            pfn[has] = self.pfn[rows[has]]
        return present, write, pfn

    def nr_present(self, ids: np.ndarray) -> np.ndarray:
        return bitmap_weight(self.present[np.asarray(ids, dtype=np.int64)])

    def store(self, ids: np.ndarray, present: np.ndarray, write: np.ndarray, pfn: np.ndarray) -> None:
        """Overwrite contents in place; only for ids the caller holds the sole reference to."""
        self._set_present(ids, bitmap_pack(present))
        self.write[ids] = bitmap_pack(write)
        explicit = pfn.any(axis=1)
        rows = self.row[ids]
        need = explicit & (rows == 0)
        if need.any():
            rows = rows.copy()
            rows[need] = self._alloc_rows(int(need.sum()))
            self.row[ids] = rows
        drop = ~explicit & (rows > 0)
        if drop.any():
            self._rows_free.extend(rows[drop].tolist())
            self.pfn[rows[drop]] = 0
            rows = rows.copy()
            rows[drop] = 0
            self.row[ids] = rows
        keep = rows > 0
        self.pfn[rows[keep]] = pfn[keep]
        self._trim_wp_dirty(ids)

    def cow(self, ids: np.ndarray) -> np.ndarray:
        """Make each id private to the caller (who holds one reference): copy where refs > 1."""
        ids = np.asarray(ids, dtype=np.int64).copy()
        shared = self.refs[ids] > 1
        if shared.any():
            old = ids[shared]
            present, write, pfn = self.load(old)
            ids[shared] = self.new(present, write, pfn, refs=1)
            copies = ids[shared]
            for n in np.flatnonzero(self.has_wp_dirty(old)).tolist():
                self.wp_dirty[int(copies[n])] = self.wp_dirty[int(old[n])].copy()
            self.put(old)
        return ids


class DirStore(_Store):
    """Contents of directory tables (PMD, PUD, P4D, PGD): 512 tagged ``int64`` entries each.

    ``child`` is the store of the level below, whose ids ``E_TABLE`` entries hold, and ``shared``
    the table of shared tables that ``E_SHARED`` entries point into.
    """

    _columns = (("entries", 0),)

    def __init__(self, child: _Store, shared: SharedTables) -> None:
        super().__init__()
        self.entries = np.zeros((64, PTRS_PER_TABLE), dtype=np.int64)
        self.child = child
        self.shared = shared
        self._by_hash: dict[int, list[int]] = {}  # interned contents by hash of their entries
        self._hash_of: dict[int, int] = {}

    def new(self, entries: np.ndarray | None = None, refs: int = 1) -> int:
        (cid,) = self._alloc_ids(1)
        self.entries[cid] = 0 if entries is None else entries
        self.refs[cid] = refs
        if entries is not None:
            self._get_children(self.entries[cid])
        return int(cid)

    def _get_children(self, entries: np.ndarray) -> None:
        tags = entry_tag(entries)
        tables = entries[tags == E_TABLE]
        if len(tables):
            self.child.get(entry_value(tables))
        boxes = entries[tags == E_SHARED]
        if len(boxes):
            self.shared.get(entry_value(boxes))

    def adopt(self, entries: np.ndarray) -> int:
        """The id of a table holding ``entries``: an existing equal one if there is one (the entries'
        references on PTE contents are then given back), or a new one that takes them over (and
        takes the storage references on shared tables that the entries do not carry)."""
        return int(self.adopt_many(entries[None])[0])

    def adopt_many(self, rows: np.ndarray) -> np.ndarray:
        """:meth:`adopt` for each row of ``rows`` in turn (a row equal to an earlier one takes
        the table made for it)."""
        out = np.zeros(len(rows), dtype=np.int64)
        first: dict[bytes, int] = {}  # contents new in this call -> the row that makes their table
        makes = np.zeros(len(rows), dtype=bool)
        for i, raw in enumerate(r.tobytes() for r in rows):
            for other in self._by_hash.get(hash(raw), ()):
                if self.refs[other] > 0 and self.entries[other].tobytes() == raw:
                    out[i] = other
                    break
            else:
                j = first.setdefault(raw, i)
                makes[i] = j == i
                out[i] = -1 - j  # made below
        made = np.flatnonzero(makes)
        if len(made):
            cids = self._alloc_ids(len(made))
            self.entries[cids] = rows[made]
            self.refs[cids] = 0
            for cid, raw in zip(cids.tolist(), first, strict=True):
                h = hash(raw)
                self._by_hash.setdefault(h, []).append(cid)
                self._hash_of[cid] = h
            later = out < 0
            out[later] = cids[np.searchsorted(made, -1 - out[later])]
            boxes = rows[made][entry_tag(rows[made]) == E_SHARED]
            if len(boxes):
                self.shared.get(entry_value(boxes))
        np.add.at(self.refs, out, 1)
        given = rows[~makes]
        tables = given[entry_tag(given) == E_TABLE]
        if len(tables):
            self.child.put(entry_value(tables))
        return out

    def intern(self, cid: int) -> int:
        """Share storage with an existing table of equal contents, if there is one.

        ``cid`` must be held by the caller alone; the caller's reference moves to the id returned.
        Contents are compared, not trusted to the hash, so a table changed since it was interned is
        never taken for another.
        """
        raw = self.entries[cid].tobytes()
        h = hash(raw)
        old = self._hash_of.get(cid)
        if old is not None and old != h:
            self._forget(cid)
        bucket = self._by_hash.setdefault(h, [])
        for other in bucket:
            if other != cid and self.refs[other] > 0 and self.entries[other].tobytes() == raw:
                self.refs[other] += 1
                self.put(cid)
                return other
        if cid not in bucket:
            bucket.append(cid)
            self._hash_of[cid] = h
        return cid

    def _forget(self, cid: int) -> None:
        h = self._hash_of.pop(cid, None)
        if h is not None:
            bucket = self._by_hash.get(h, [])
            if cid in bucket:
                bucket.remove(cid)
            if not bucket:
                self._by_hash.pop(h, None)

    def _release(self, ids: np.ndarray) -> None:
        for cid in ids.tolist():
            if cid in self._hash_of:
                self._forget(cid)
        entries = self.entries[ids].ravel()
        tags = entry_tag(entries)
        tables = entries[tags == E_TABLE]
        boxes = entries[tags == E_SHARED]
        self.entries[ids] = 0
        if len(tables):
            self.child.put(entry_value(tables))
        if len(boxes):
            self.shared.put(entry_value(boxes))

    def cow(self, cid: int) -> int:
        """Make ``cid`` private to the caller (who holds one reference); copy if shared."""
        if self.refs[cid] == 1:
            if cid in self._hash_of:
                self._forget(cid)  # about to change: no longer a candidate for sharing
            return cid
        new = self.new(self.entries[cid].copy())
        self.put(cid)
        return new


DROP, COPY, COW, COW_COUNTED = 0, 1, 2, 3  # how a user lets go of a shared table (SharedTables.mode)


class SharedTables:
    """Tables that several mms' directory entries point at.

    Two counts, kept apart on purpose (hugetlb once used the table page's refcount as its share
    count and transient references made unshared tables look shared):

    ``users[id]``  how many mms' page tables use the table -- ``pt_share_count`` + 1.  Kept by the
                   operations (attach, unshare, fork, exit); 1 means only one user is left and the
                   table behaves as that mm's own.
    ``refs[id]``   storage references from directory contents (see the module docstring).

    ``content[id]`` is the id of the table's contents in ``stores[level[id]]``; the shared table
    holds one storage reference on it.  ``owner[id]`` is the mm that allocated it (0 once that mm
    has let go), so that VmSHPT counts only tables an mm attached; ``children[id, level]`` counts the
    tables of each level (PTE, PMD) inside a shared table of a higher level, which every user's VmPTE
    includes.  ``mode[id]`` is how a user lets go of it: :data:`DROP` (the user clears its entry and
    refaults into a table of its own), :data:`COPY` (the user gets a private copy of its contents)
    or :data:`COW` (a copy-on-write table: copied as with COPY, and before any change a user makes to
    it, faults included, while others use it) or :data:`COW_COUNTED` (as COW, but its pages were
    counted for every user when it was shared: a copy takes no page references, and a user that lets
    go without copying drops its own).
    """

    def __init__(self) -> None:
        self.users = np.zeros(64, dtype=np.int64)
        self.refs = np.zeros(64, dtype=np.int64)
        self.level = np.zeros(64, dtype=np.int8)
        self.content = np.zeros(64, dtype=np.int64)
        self.owner = np.zeros(64, dtype=np.int64)
        self.children = np.zeros((64, 2), dtype=np.int64)
        self.mode = np.zeros(64, dtype=np.int8)
        self.stores: dict[int, _Store] = {}
        self._next = 1
        self._free: list[int] = []
        self.nr_live = 0

    def new(self, level: int, content_ids: np.ndarray, owner: int, mode: int = 0) -> np.ndarray:
        """Shared tables holding ``content_ids`` (the caller's storage references move to them),
        each with one user, ``owner``, let go of as ``mode`` says."""
        n = len(content_ids)
        reuse = min(n, len(self._free))
        sids = [self._free.pop() for _ in range(reuse)]
        fresh = n - reuse
        if fresh:
            start = self._next
            self._next += fresh
            if self._next > len(self.users):
                capacity = max(self._next, 2 * len(self.users))
                for name in ("users", "refs", "level", "content", "owner", "children", "mode"):
                    setattr(self, name, _grown(getattr(self, name), capacity))
            sids.extend(range(start, start + fresh))
        out = np.asarray(sids, dtype=np.int64)
        self.users[out] = 1
        self.refs[out] = 0
        self.owner[out] = owner
        self.children[out] = 0
        self.mode[out] = mode
        self.level[out] = level
        self.content[out] = content_ids
        self.nr_live += n
        return out

    def get(self, sids: np.ndarray | int) -> None:
        np.add.at(self.refs, np.asarray(sids, dtype=np.int64), 1)

    def put(self, sids: np.ndarray | int) -> None:
        sids = np.atleast_1d(np.asarray(sids, dtype=np.int64))
        np.subtract.at(self.refs, sids, 1)
        for sid in np.unique(sids[self.refs[sids] == 0]).tolist():
            if self.content[sid]:
                self.stores[int(self.level[sid])].put(int(self.content[sid]))
            self.content[sid] = 0
            self._free.append(sid)
            self.nr_live -= 1

    def cow_contents(self, sids: np.ndarray) -> np.ndarray:
        """:meth:`cow_content` for many shared PTE tables at once."""
        store = self.stores[0]
        cids = store.cow(self.content[sids])
        self.content[sids] = cids
        return cids

    def cow_content(self, sid: int) -> int:
        """Make the shared table's contents private to it (they may share storage) and return them."""
        store = self.stores[int(self.level[sid])]
        cid = int(self.content[sid])
        new = int(store.cow(np.array([cid]))[0]) if isinstance(store, PteStore) else store.cow(cid)
        self.content[sid] = new
        return new


__all__ = ["COPY", "COW", "COW_COUNTED", "DROP", "DirStore", "PteStore", "SharedTables"]
