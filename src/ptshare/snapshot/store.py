"""The snapshot file: one compressed numpy ``.npz`` archive.

* ``meta``: UTF-8 JSON -- ``schema`` (``ptshare.snapshot/1``), when and where it was taken, how
  pagemap was read, ``/proc/meminfo`` figures, ``problems`` (non-empty: the snapshot is partial)
  and ``warnings``, then the processes (pid, ppid, comm, cmdline, ``/proc/PID/status`` kB fields)
  and the objects (device, inode, path, kind, size), and the strings the VMA table refers to;
* ``vma_*``: the VMA table, one column per field, one row per VMA of every process in order;
* ``runs`` (uint64 start/length pairs) and ``bits`` (packed bitmaps): the present pages of every
  VMA, which ``vma_{mapped,written}_{enc,off,len}`` locate (see :mod:`.pageset`).

A VMA's ``written`` set equal to its ``mapped`` set is stored once (encoding ``SAME``).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import PtshareError
from .model import SCHEMA, ObjectSnap, ProcessSnap, Snapshot, VmaSnap
from .pageset import BITS, EMPTY, PageSet

SAME = 3
_INT_COLUMNS = ("start", "end", "offset", "inode", "kernel_page_kb", "rss_kb", "swap_kb", "anon_kb",
                "zero_pages", "huge_pages", "swapped_pages", "object")
_STR_COLUMNS = ("perms", "dev", "path", "vmflags", "kind")
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
    planes: dict[str, list] = {f"{p}_{x}": [] for p in ("mapped", "written") for x in ("enc", "off", "len")}
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
            for plane, ref in (("mapped", mapped), ("written", written)):
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
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise SnapshotError(f"{path} is damaged: {type(exc).__name__}: {exc}") from None


def _build(meta: dict, arrays: dict[str, np.ndarray]) -> Snapshot:
    strings = meta.pop("strings")
    processes = [ProcessSnap(**{f: p[f] for f in _PROC_FIELDS}) for p in meta.pop("processes")]
    objects = [ObjectSnap(**o) for o in meta.pop("objects")]
    n = len(arrays["vma_proc"])
    for c in ("proc", *_INT_COLUMNS, *_STR_COLUMNS):
        if len(arrays[f"vma_{c}"]) != n:
            raise ValueError(f"column vma_{c} has {len(arrays[f'vma_{c}'])} rows, not {n}")
    ints = {c: arrays[f"vma_{c}"].tolist() for c in _INT_COLUMNS}
    strs = {c: arrays[f"vma_{c}"].tolist() for c in _STR_COLUMNS}
    refs = {f"{p}_{x}": arrays[f"vma_{p}_{x}"].tolist() for p in ("mapped", "written") for x in ("enc", "off", "len")}
    runs, bits = arrays["runs"], arrays["bits"]
    for i, owner in enumerate(arrays["vma_proc"].tolist()):
        npages = (ints["end"][i] - ints["start"][i]) >> 12
        mapped = _pages(refs, "mapped", i, npages, runs, bits, None)
        fields = {c: ints[c][i] for c in _INT_COLUMNS} | {c: strings[strs[c][i]] for c in _STR_COLUMNS}
        vma = VmaSnap(**fields, mapped=mapped, written=_pages(refs, "written", i, npages, runs, bits, mapped))
        if not -1 <= vma.object < len(objects) or vma.end <= vma.start:
            raise ValueError(f"VMA {i} is inconsistent")
        processes[owner].vmas.append(vma)
    return Snapshot(meta, processes, objects)


def _pages(refs: dict[str, list], plane: str, i: int, npages: int, runs: np.ndarray, bits: np.ndarray,
           same: PageSet | None) -> PageSet:
    enc, off, length = refs[f"{plane}_enc"][i], refs[f"{plane}_off"][i], refs[f"{plane}_len"][i]
    if enc == SAME and same is not None:
        return same
    if enc == BITS:
        if off + length > len(bits) or length != (npages + 7) // 8:
            raise ValueError(f"VMA {i}: bitmap out of range")
        return PageSet.from_payload(npages, enc, bits[off:off + length])
    if enc == EMPTY:
        return PageSet.empty(npages)
    if off + length > len(runs) or length % 2:
        raise ValueError(f"VMA {i}: runs out of range")
    return PageSet.from_payload(npages, enc, runs[off:off + length])
