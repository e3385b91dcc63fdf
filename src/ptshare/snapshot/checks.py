"""What :func:`.store.load` accepts: every field of a snapshot file as :func:`.store.save` writes
it.  A file that fails a check is damaged (by hand, by a tool, on disk); the error names the
process, VMA or object, the field, what was found and what is allowed."""

from __future__ import annotations

import math
import re

import numpy as np

from ..arch import PAGE_SHIFT, PAGE_SIZE
from ..mm.pagecache import KINDS as OBJECT_KINDS
from .model import ANON, SPECIAL, ObjectSnap, ProcessSnap
from .pageset import EMPTY, RUNS, PageSet
from .reader import USER_TOP

_PERMS = re.compile(r"[r-][w-][x-][ps]")  # as /proc/PID/maps shows them
_DEV = re.compile(r"[0-9a-f]+:[0-9a-f]+")  # major:minor in hex
_META = {"created": str, "host": str, "kernel": str, "machine": str, "method": str, "pfns_visible": bool,
         "page_size": int, "requested": int, "read_seconds": float, "meminfo": dict, "problems": list,
         "warnings": list, "processes": list, "objects": list, "strings": list}
_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a JSON object",
          list: "a list"}


class Damaged(ValueError):
    """A field :func:`save` cannot have written; :func:`load` adds the file's name."""


def need(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise Damaged(f"{where}: {what}")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is(value: object, kind: type) -> bool:
    """Whether ``value`` is of JSON type ``kind`` (true is no integer; an integer is a number, NaN is not)."""
    if kind is float:
        return type(value) is int or (type(value) is float and math.isfinite(value))
    return type(value) is kind


def typed(value: object, kind: type, where: str, name: str) -> None:
    need(_is(value, kind), where, f"{name} must be {_NAMES[kind]}, not {_show(value)}")


def count(value: object, where: str, name: str, least: int = 0) -> int:
    need(type(value) is int and value >= least, where, f"{name} must be an integer of at least {least}, "
         f"not {_show(value)}")
    return value


def check_meta(meta: dict) -> None:
    for key in ("processes", "objects", "strings"):
        need(key in meta, "metadata", f"it has no {key!r} list")
    for key, kind in _META.items():
        if key in meta:
            typed(meta[key], kind, "metadata", key)
    if "page_size" in meta:
        need(meta["page_size"] == PAGE_SIZE, "metadata", f"page_size {meta['page_size']} must be {PAGE_SIZE}")
    for key in ("problems", "warnings", "strings"):
        for n, text in enumerate(meta.get(key, [])):
            typed(text, str, "metadata", f"{key}[{n}]")
    for key, value in meta.get("meminfo", {}).items():
        count(value, "metadata", f"meminfo {key}")


def check_process(n: int, p: object, fields: tuple[str, ...]) -> ProcessSnap:
    where = f"process number {n}"
    typed(p, dict, "metadata", where)
    for f in fields:
        need(f in p, where, f"the field {f!r} is missing")
    where = f"process {count(p['pid'], where, 'pid', 1)}"
    count(p["ppid"], where, "ppid")
    typed(p["comm"], str, where, "comm")
    typed(p["cmdline"], list, where, "cmdline")
    for arg in p["cmdline"]:
        typed(arg, str, where, "every argument of cmdline")
    count(p["starttime"], where, "starttime")
    typed(p["status"], dict, where, "status")
    for key, value in p["status"].items():
        count(value, where, f"status {key}")
    typed(p["read_ms"], float, where, "read_ms")
    count(p["attempts"], where, "attempts", 1)
    if p["anon_shared_kb"] is not None:
        count(p["anon_shared_kb"], where, "anon_shared_kb (null when frame numbers were hidden)")
    return ProcessSnap(**{f: p[f] for f in fields})


def check_object(n: int, o: object) -> ObjectSnap:
    where = f"object {n}"
    typed(o, dict, "metadata", where)
    for f in ("dev", "inode", "path", "kind", "size"):
        need(f in o, where, f"the field {f!r} is missing")
    need(type(o["dev"]) is str and _DEV.fullmatch(o["dev"]) is not None, where,
         f"dev {_show(o['dev'])} must be a device number like 'fe:01'")
    count(o["inode"], where, "inode")
    typed(o["path"], str, where, "path")
    need(o["kind"] in OBJECT_KINDS, where, f"kind {_show(o['kind'])} must be one of {', '.join(OBJECT_KINDS)}")
    count(o["size"], where, "size")
    return ObjectSnap(o["dev"], o["inode"], o["path"], o["kind"], o["size"])


def check_arrays(arrays: dict[str, np.ndarray], names: list[str]) -> None:
    """Every array in ``names`` is there, a column of integers; ``bits`` is bytes."""
    for name in names:
        need(name in arrays, "arrays", f"{name} is missing")
        a = arrays[name]
        need(a.ndim == 1 and a.dtype.kind in "iu", name,
             f"must be a 1-dimensional array of integers, not {a.dtype} of shape {a.shape}")
    need(arrays["bits"].dtype == np.uint8, "bits", f"must be an array of uint8, not {arrays['bits'].dtype}")


def check_vma(v: dict, n_objects: int, where: str) -> int:
    """Check the fields of one VMA; its number of pages."""
    start, end = v["start"], v["end"]
    need(start % PAGE_SIZE == 0 and end % PAGE_SIZE == 0 and start < end <= USER_TOP, where,
         f"start {start:#x} and end {end:#x} must be page-aligned, start below end, end at most {USER_TOP:#x}")
    need(v["offset"] >= 0 and v["offset"] % PAGE_SIZE == 0, where,
         f"offset {v['offset']} must be a non-negative multiple of {PAGE_SIZE}")
    npages = (end - start) >> PAGE_SHIFT
    for c in ("inode", "rss_kb", "swap_kb", "anon_kb"):
        count(v[c], where, c)
    count(v["kernel_page_kb"], where, "kernel_page_kb", 1)
    for c in ("zero_pages", "huge_pages", "swapped_pages"):
        need(0 <= v[c] <= npages, where, f"{c} {v[c]} must be between 0 and its {npages} pages")
    need(-1 <= v["object"] < n_objects, where, f"object {v['object']} must be -1 (none) or below {n_objects}")
    need(_PERMS.fullmatch(v["perms"]) is not None, where,
         f"perms {_show(v['perms'])} must be 4 characters like 'rw-p' or 'r-xs', as /proc/PID/maps shows them: "
         "r or -, w or -, x or -, then p (private) or s (shared)")
    need(_DEV.fullmatch(v["dev"]) is not None, where, f"dev {_show(v['dev'])} must be a device number like 'fe:01'")
    need(all(len(flag) == 2 for flag in v["vmflags"].split()), where,
         f"vmflags {_show(v['vmflags'])} must be two-letter codes separated by spaces, like 'rd wr mr'")
    kinds = (ANON, SPECIAL) if v["object"] < 0 else OBJECT_KINDS
    need(v["kind"] in kinds, where, f"kind {_show(v['kind'])} must be one of {', '.join(kinds)} "
         f"({'without' if v['object'] < 0 else 'with'} an object)")
    return npages


def subset(pages: PageSet, of: PageSet) -> bool:
    """Whether ``pages`` are all in ``of``, in memory bounded by what the file stores (runs need no mask)."""
    if pages.encoding == EMPTY or of.encoding == EMPTY:
        return pages.encoding == EMPTY
    if pages.encoding == RUNS and of.encoding == RUNS:
        j = np.searchsorted(of.starts, pages.starts, side="right").astype(np.int64) - 1
        return bool((j >= 0).all() and (of.starts[j] + of.lengths[j] >= pages.starts + pages.lengths).all())
    return not (pages.mask() & ~of.mask()).any()
