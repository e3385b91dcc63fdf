"""The snapshot file: one compressed numpy ``.npz`` archive.

* ``meta``: UTF-8 JSON -- ``schema`` (``ptshare.snapshot/1``), when and where it was taken, how
  pagemap was read, ``/proc/meminfo`` figures, ``problems`` (non-empty: the snapshot is partial)
  and ``warnings``, then the processes (pid, ppid, comm, cmdline, ``/proc/PID/status`` kB fields)
  and the objects (device, inode, path, kind, size), and the strings the VMA table refers to;
* ``vma_*``: the VMA table, one column per field, one row per VMA of every process in order;
* ``runs`` (uint64 start/length pairs) and ``bits`` (packed bitmaps): the present pages of every
  VMA, which ``vma_{mapped,written}_{enc,off,len}`` locate (see :mod:`.pageset`).

A VMA's ``written`` set equal to its ``mapped`` set is stored once (encoding ``SAME``).  The pages
huge PMDs map (``vma_thp_*``) are absent from files written before THP was read: none, then.
"""

from __future__ import annotations

import itertools
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from ..arch import PAGE_SIZE
from ..errors import PtshareError
from .checks import Damaged, check_arrays, check_meta, check_object, check_process, check_vma, need, subset
from .model import SCHEMA, Snapshot, VmaSnap
from .pageset import BITS, EMPTY, RUNS, PageSet
from .take import HPAGE_SIZE

SAME = 3
_INT_COLUMNS = ("start", "end", "offset", "inode", "kernel_page_kb", "rss_kb", "swap_kb", "anon_kb",
                "zero_pages", "huge_pages", "swapped_pages", "object")
_STR_COLUMNS = ("perms", "dev", "path", "vmflags", "kind")
_PLANES = tuple(f"{p}_{x}" for p in ("mapped", "written", "thp") for x in ("enc", "off", "len"))
_OPTIONAL = tuple(f"vma_thp_{x}" for x in ("enc", "off", "len"))
_PROC_FIELDS = ("pid", "ppid", "comm", "cmdline", "starttime", "status", "read_ms", "attempts", "anon_shared_kb")


class SnapshotError(PtshareError):
    """Raised when a snapshot file cannot be read: missing, not a snapshot, another version, damaged."""


# --- writing ------------------------------------------------------------------------------------

class _Payload:
    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []
        self.bits: list[np.ndarray] = []
        self.n_runs = 0
        self.n_bits = 0

    def add(self, pages: PageSet) -> tuple[int, int, int]:
        enc = pages.encoding
        data = pages.payload()
        if enc == BITS:
            self.bits.append(data)
            self.n_bits += len(data)
            return enc, self.n_bits - len(data), len(data)
        if enc == EMPTY:
            return enc, 0, 0
        self.runs.append(data)
        self.n_runs += len(data)
        return enc, self.n_runs - len(data), len(data)


def save(snapshot: Snapshot, path: str | Path) -> None:
    """Write ``snapshot`` to ``path`` (atomically: a partly written file never replaces a good one)."""
    strings: dict[str, int] = {}
    cols: dict[str, list] = {c: [] for c in ("proc", *_INT_COLUMNS, *_STR_COLUMNS)}
    planes: dict[str, list] = {plane: [] for plane in _PLANES}
    payload = _Payload()
    for n, proc in enumerate(snapshot.processes):
        for vma in proc.vmas:
            cols["proc"].append(n)
            for c in _INT_COLUMNS:
                cols[c].append(getattr(vma, c))
            for c in _STR_COLUMNS:
                cols[c].append(strings.setdefault(getattr(vma, c), len(strings)))
            mapped = payload.add(vma.mapped)
            same = vma.written.count() == vma.mapped.count()
            written = (SAME, 0, 0) if same else payload.add(vma.written)
            thp = payload.add(vma.thp) if vma.thp is not None else (EMPTY, 0, 0)
            for plane, ref in (("mapped", mapped), ("written", written), ("thp", thp)):
                for x, value in zip(("enc", "off", "len"), ref, strict=True):
                    planes[f"{plane}_{x}"].append(value)
    meta = dict(snapshot.meta)
    meta["processes"] = [{f: getattr(p, f) for f in _PROC_FIELDS} for p in snapshot.processes]
    meta["objects"] = [vars(o) for o in snapshot.objects]
    meta["strings"] = list(strings)
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    for c, values in cols.items():
        dtype = np.int32 if c in ("proc", *_STR_COLUMNS) else np.int64
        arrays[f"vma_{c}"] = np.array(values, dtype=np.uint64 if c in ("start", "end") else dtype)
    for c, values in planes.items():
        arrays[f"vma_{c}"] = np.array(values, dtype=np.int64)
    arrays["runs"] = np.concatenate(payload.runs) if payload.runs else np.zeros(0, dtype=np.uint64)
    arrays["bits"] = np.concatenate(payload.bits) if payload.bits else np.zeros(0, dtype=np.uint8)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SnapshotError(f"cannot write snapshot {path}: {exc.strerror}") from None


# --- reading ------------------------------------------------------------------------------------

def load(path: str | Path) -> Snapshot:
    """Read a snapshot file.  Raises :class:`SnapshotError` saying what is wrong with it."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise SnapshotError(f"snapshot {path} does not exist") from None
    except IsADirectoryError:
        raise SnapshotError(f"snapshot {path} is a directory, not a file") from None
    except OSError as exc:
        raise SnapshotError(f"cannot read snapshot {path}: {exc.strerror or exc}") from None
    except (ValueError, zipfile.BadZipFile, EOFError):
        raise SnapshotError(f"{path} is not a ptshare snapshot (not a numpy .npz archive); "
                            "make one with 'ptshare snapshot'") from None
    if not isinstance(arrays, dict) or "meta" not in arrays:
        raise SnapshotError(f"{path} is not a ptshare snapshot (no metadata); make one with 'ptshare snapshot'")
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (ValueError, UnicodeDecodeError):
        raise SnapshotError(f"{path} is damaged: its metadata is not valid JSON") from None
    schema = meta.get("schema") if isinstance(meta, dict) else None
    if schema != SCHEMA:
        raise SnapshotError(f"{path} is a snapshot of format {schema!r}; this ptshare reads {SCHEMA!r}")
    try:
        return _build(meta, arrays)
    except Damaged as exc:
        raise SnapshotError(f"{path} is damaged: {exc}") from None
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise SnapshotError(f"{path} is damaged: {type(exc).__name__}: {exc}") from None


def _build(meta: dict, arrays: dict[str, np.ndarray]) -> Snapshot:
    """The snapshot ``meta`` and ``arrays`` describe, every field checked against what :func:`save` writes."""
    check_meta(meta)
    strings = meta.pop("strings")
    processes = [check_process(n, p, _PROC_FIELDS) for n, p in enumerate(meta.pop("processes"))]
    objects = [check_object(n, o) for n, o in enumerate(meta.pop("objects"))]
    pids = [p.pid for p in processes]
    need(len(set(pids)) == len(pids), "processes", "the same pid appears twice; a snapshot reads each process once")
    n = len(arrays.get("vma_proc", ()))
    for c in _OPTIONAL:
        arrays.setdefault(c, np.zeros(n, dtype=np.int64))
    check_arrays(arrays, [f"vma_{c}" for c in ("proc", *_INT_COLUMNS, *_STR_COLUMNS, *_PLANES)] + ["runs", "bits"])
    n = len(arrays["vma_proc"])
    for c in ("proc", *_INT_COLUMNS, *_STR_COLUMNS, *_PLANES):
        if len(arrays[f"vma_{c}"]) != n:
            raise ValueError(f"column vma_{c} has {len(arrays[f'vma_{c}'])} rows, not {n}")
    ints = {c: arrays[f"vma_{c}"].tolist() for c in _INT_COLUMNS}
    strs = {c: arrays[f"vma_{c}"].tolist() for c in _STR_COLUMNS}
    refs = {c: arrays[f"vma_{c}"].tolist() for c in _PLANES}
    runs, bits = arrays["runs"], arrays["bits"]
    extent = [0] * len(objects)  # the furthest offset the VMAs of each object map
    for i, owner in enumerate(arrays["vma_proc"].tolist()):
        need(0 <= owner < len(processes), f"VMA row {i}", f"belongs to process number {owner}, but the snapshot "
             f"holds {len(processes)} processes")
        proc = processes[owner]
        fields = {c: ints[c][i] for c in _INT_COLUMNS}
        for c in _STR_COLUMNS:
            ref = strs[c][i]
            need(0 <= ref < len(strings), f"process {proc.pid}, VMA row {i}",
                 f"{c} refers to string {ref}, but there are {len(strings)} strings")
            fields[c] = strings[ref]
        where = f"process {proc.pid}, VMA {fields['start']:#x}"
        npages = check_vma(fields, len(objects), where)
        mapped = _pages(refs, "mapped", i, npages, runs, bits, None, where)
        written = _pages(refs, "written", i, npages, runs, bits, mapped, where)
        thp = _pages(refs, "thp", i, npages, runs, bits, mapped, where, allow_same=False)
        vma = VmaSnap(**fields, mapped=mapped, written=written, thp=thp if thp.count() else None)
        if vma.object >= 0:
            need(vma.kind == objects[vma.object].kind, where, f"kind {vma.kind!r} must be that of its object "
                 f"{vma.object}, {objects[vma.object].kind!r}")
            extent[vma.object] = max(extent[vma.object], vma.offset + vma.end - vma.start)
        proc.vmas.append(vma)
    for proc in processes:
        vmas = sorted(proc.vmas, key=lambda v: v.start)
        for a, b in itertools.pairwise(vmas):
            need(b.start >= a.end, f"process {proc.pid}, VMA {b.start:#x}",
                 f"overlaps the VMA at {a.start:#x}-{a.end:#x}; the VMAs of a process are disjoint")
    for k, obj in enumerate(objects):
        unit = HPAGE_SIZE if obj.kind == "hugetlb" else PAGE_SIZE
        size = -(-extent[k] // unit) * unit
        need(obj.size == size, f"object {k} ({obj.path})", f"size {obj.size} must be {size}: the furthest offset "
             f"its VMAs map, rounded up to {unit // 1024} kB")
    return Snapshot(meta, processes, objects)


def _pages(refs: dict[str, list], plane: str, i: int, npages: int, runs: np.ndarray, bits: np.ndarray,
           same: PageSet | None, where: str, allow_same: bool = True) -> PageSet:
    """The ``plane`` pages of VMA row ``i``; ``written`` and ``thp`` pages must be some of the ``mapped``
    ones (``same``), which ``written`` may say it equals."""
    enc, off, length = refs[f"{plane}_enc"][i], refs[f"{plane}_off"][i], refs[f"{plane}_len"][i]
    where = f"{where}: {plane} pages"
    encodings = (EMPTY, RUNS, BITS) if same is None or not allow_same else (EMPTY, RUNS, BITS, SAME)
    need(enc in encodings, where, f"encoding {enc} must be one of {encodings}")
    need(off >= 0 and length >= 0, where, f"offset {off} and length {length} must not be negative")
    if enc in (EMPTY, SAME):
        need(off == length == 0, where, f"offset {off} and length {length} must be 0 for encoding {enc}")
        return same if enc == SAME and same is not None else PageSet.empty(npages)
    if enc == BITS:
        need(length == (npages + 7) // 8 and off + length <= len(bits), where,
             f"a bitmap of {length} bytes at {off} must be {(npages + 7) // 8} bytes within the {len(bits)} of bits")
        pages = PageSet.from_payload(npages, enc, bits[off:off + length])
    else:
        need(length > 0 and length % 2 == 0 and off + length <= len(runs), where,
             f"{length} numbers at {off} must be start, length pairs within the {len(runs)} of runs")
        pairs = runs[off:off + length].astype(np.int64).reshape(-1, 2)
        starts, lengths = pairs[:, 0], pairs[:, 1]
        ok = bool((pairs >= 0).all() and (pairs <= npages).all() and (lengths > 0).all())
        ends = starts + lengths
        need(ok and bool((ends <= npages).all() and (starts[1:] >= ends[:-1]).all()), where,
             f"runs must be sorted, disjoint and non-empty, within the VMA's {npages} pages")
        pages = PageSet.from_payload(npages, enc, pairs)
    if same is not None:
        need(subset(pages, same), where, "must be some of its mapped pages")
    return pages
