"""Snapshots without live processes: page sets, parsing, the file format and its errors, whatif on
snapshots built by hand (hugetlb PMD sharing, read-only mappings with written pages)."""

import json
import zipfile

import numpy as np
import pytest

from ptshare.cli.main import main
from ptshare.cost import load_profile
from ptshare.snapshot import ObjectSnap, ProcessSnap, Snapshot, SnapshotError, VmaSnap, load, save, whatif
from ptshare.snapshot.bounds import spans_covered
from ptshare.snapshot.model import SCHEMA
from ptshare.snapshot.pageset import BITS, EMPTY, RUNS, PageSet
from ptshare.snapshot.procfs import parse_smaps

GIB = 1 << 30
MIB = 1 << 20


# --- page sets ----------------------------------------------------------------------------------

@pytest.mark.parametrize("npages", [1, 9, 512, 100_000])
@pytest.mark.parametrize("density", [0.0, 0.001, 0.3, 1.0])
def test_pageset_round_trips(npages, density):
    mask = np.random.default_rng(npages).random(npages) < density
    pages = PageSet.from_mask(mask)
    assert pages.count() == mask.sum()
    assert (pages.mask() == mask).all()
    assert (PageSet.from_runs(npages, *pages.runs()).mask() == mask).all()
    assert (PageSet.from_payload(npages, pages.encoding, pages.payload()).mask() == mask).all()
    rebuilt = np.zeros(npages, dtype=bool)
    for lo, chunk in pages.chunks(64):
        rebuilt[lo:lo + len(chunk)] = chunk
    assert (rebuilt == mask).all()


def test_pageset_picks_the_smaller_form():
    npages = 16 << 18  # 64 GiB of 4 KiB pages
    assert PageSet.from_runs(npages, [0], [npages]).encoding == RUNS  # a fully touched segment: one run
    assert PageSet.from_runs(npages, [0, 5], [5, 5]).count() == 10  # touching runs merge
    scattered = np.zeros(npages, dtype=bool)
    scattered[::3] = True
    pages = PageSet.from_mask(scattered)
    assert pages.encoding == BITS and pages.payload().nbytes == npages // 8
    assert PageSet.empty(npages).encoding == EMPTY


# --- /proc parsing and bounds -------------------------------------------------------------------

SMAPS = """\
7f0000000000-7f0020000000 rw-s 00000000 00:01 1048                       /dev/zero (deleted)
Size:             524288 kB
KernelPageSize:        4 kB
Rss:                1024 kB
Anonymous:             0 kB
VmFlags: rd wr sh mr mw me ms sd
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                  16 kB
VmFlags: rd wr mr mw me gd ac
"""


def test_parse_smaps():
    seg, stack = parse_smaps(SMAPS)
    assert (seg.start, seg.end, seg.perms) == (0x7F0000000000, 0x7F0020000000, "rw-s")
    assert (seg.dev, seg.inode) == ("00:01", 1048)
    assert seg.path == "/dev/zero (deleted)" and seg.shared and "sh" in seg.vmflags
    assert seg.fields["Rss"] == 1024 and seg.fields["KernelPageSize"] == 4
    assert stack.path == "[stack]" and not stack.shared and stack.fields == {"Rss": 16}


@pytest.mark.parametrize(("path", "dev", "inode", "perms", "vmflags", "kind"), [
    ("", "00:00", 0, "rw-p", "rd wr", "anon"),
    ("[heap]", "00:00", 0, "rw-p", "rd wr", "anon"),
    ("[vvar]", "00:00", 0, "r--p", "rd pf io", "special"),
    ("[vdso]", "00:00", 0, "r-xp", "rd ex", "special"),
    ("/dev/zero (deleted)", "00:01", 1048, "rw-s", "rd wr sh", "shmem"),
    ("/SYSV0052e2c1 (deleted)", "00:01", 5, "rw-s", "rd wr sh", "shmem"),
    ("/SYSV0052e2c1 (deleted)", "00:10", 5, "rw-s", "rd wr sh ht", "hugetlb"),
    ("/anon_hugepage (deleted)", "00:10", 9, "rw-s", "rd wr sh ht", "hugetlb"),
    ("/dev/shm/PostgreSQL.1", "00:1b", 10, "rw-s", "rd wr sh", "shmem"),
    ("/usr/lib/libc.so.6", "fe:00", 77, "r-xp", "rd ex", "file"),
    ("/dev/zero", "00:05", 4, "rw-p", "rd wr", "anon"),
    ("/dev/nvidia0", "00:05", 7, "rw-s", "rd wr sh", "special"),
])
def test_kind_of_mapping(path, dev, inode, perms, vmflags, kind):
    from ptshare.snapshot.take import mapping_kind

    vma = _vma(0x10000, 4096, perms, vmflags=vmflags)
    vma.path, vma.dev, vma.inode = path, dev, inode
    assert mapping_kind(vma, {"00:1b": "tmpfs", "fe:00": "ext4", "00:05": "devtmpfs"}) == kind


def test_spans_covered():
    starts = np.array([0, 4096, 3 * MIB, 10 * MIB], dtype=np.int64)
    ends = np.array([4096, 2 * MIB + 4096, 5 * MIB, 10 * MIB + 4096], dtype=np.int64)
    assert spans_covered(starts, ends, 21) == 4  # 2 MiB spans 0, 1, 2 and 5, each counted once
    assert spans_covered(starts[:0], ends[:0], 21) == 0


# --- snapshots built by hand --------------------------------------------------------------------

def _vma(start, size, perms, *, kind="anon", obj=-1, offset=0, written=None, present=None, vmflags="rd wr mr mw me"):
    npages = size >> 12
    mapped = PageSet.from_runs(npages, [0], [npages]) if present is None else present
    return VmaSnap(start=start, end=start + size, perms=perms, offset=offset, dev="00:01" if obj >= 0 else "00:00",
                   inode=obj + 1, path="" if obj < 0 else f"/obj{obj}", vmflags=vmflags, kernel_page_kb=4,
                   rss_kb=0, swap_kb=0, anon_kb=0, mapped=mapped,
                   written=mapped if written is None else written, object=obj, kind=kind)


def _snapshot(processes, objects):
    meta = {"schema": SCHEMA, "created": "now", "host": "test", "kernel": "6.18", "method": "pagemap-scan",
            "meminfo": {"PageTables": 1000}, "problems": [], "warnings": []}
    return Snapshot(meta, processes, objects)


def _proc(pid, vmas, vmpte_kb):
    return ProcessSnap(pid=pid, ppid=1, comm=f"p{pid}", cmdline=[f"p{pid}"], starttime=pid, status={"VmPTE": vmpte_kb},
                       vmas=vmas)


def hugetlb_snapshot():
    """Three processes mapping a 2 GiB hugetlb file at the same 1 GiB-aligned address, every page present."""
    seg = ObjectSnap("00:10", 1, "/SYSV00000001 (deleted)", "hugetlb", 2 * GIB)
    procs = [_proc(100 + n, [_vma(0x7F0000000000, 2 * GIB, "rw-s", kind="hugetlb", obj=0,
                                  written=PageSet.empty(2 * GIB >> 12), vmflags="rd wr sh mr mw me ms ht")], 12)
             for n in range(3)]
    return _snapshot(procs, [seg])


def test_whatif_hugetlb_pmd_sharing():
    doc = whatif(hugetlb_snapshot(), ["linux", "shared-pt"], load_profile())
    assert doc["schema"] == "ptshare.whatif/1"
    for proc in doc["processes"].values():
        # VmPTE counts the shared PMD tables in every sharer: 2 PMD tables + 1 PUD table
        assert proc["policies"]["linux"]["vmpte_kb"] == 12 == proc["measured_vmpte_kb"]
        assert proc["linux_check"]["verdict"] == "exact"
        assert proc["policies"]["linux"]["warmup"]["faults"] == 2  # one per shared 1 GiB PMD table
    system = doc["system"]
    # 3 PGDs + 3 PUD tables + 2 shared PMD tables, against 6 PMD tables without sharing
    assert system["policies"]["linux"]["pagetables_kb"] == 8 * 4
    assert system["savings"]["hugetlb-pmd-sharing"]["pagetables_kb"] == 4 * 4


def test_whatif_read_only_mapping_with_written_pages():
    """RELRO: pages written, then the mapping made read-only; replay maps it writable, writes, mprotects."""
    lib = ObjectSnap("fe:00", 7, "/usr/lib/libc.so.6", "file", 64 * 1024)
    npages = 16
    written = PageSet.from_runs(npages, [0], [4])
    vmas = [_vma(0x7F0000100000, 64 * 1024, "r--p", kind="file", obj=0, written=written),
            _vma(0x7F0000200000, 8 * MIB, "rw-p", present=PageSet.from_runs(2048, [0, 1024], [1, 1]))]
    doc = whatif(_snapshot([_proc(7, vmas, 20)], [lib]), ["linux"], load_profile())
    proc = doc["processes"]["7"]
    assert proc["linux_check"]["verdict"] == "exact"  # 3 PTE tables + 1 PMD table + 1 PUD table
    # the library's VMA has an anon_vma, so fork copies all its 16 PTEs; and the heap's 2
    assert proc["policies"]["linux"]["fork"]["ptes_copied"] == 16 + 2
    assert proc["policies"]["linux"]["warmup"]["faults"] == 1  # its 12 page-cache pages, by fault-around
    assert doc["warnings"] == []


def test_save_and_load_round_trip(tmp_path):
    snap = hugetlb_snapshot()
    snap.processes[0].vmas.append(_vma(0x10000, 64 * MIB, "rw-p", present=PageSet.from_mask(
        np.random.default_rng(1).random(64 * MIB >> 12) < 0.3)))
    path = tmp_path / "s.npz"
    save(snap, path)
    back = load(path)
    assert back.meta["schema"] == SCHEMA and not back.partial
    assert [p.pid for p in back.processes] == [100, 101, 102]
    for a, b in zip(snap.processes, back.processes, strict=True):
        assert a.status == b.status and len(a.vmas) == len(b.vmas)
        for va, vb in zip(a.vmas, b.vmas, strict=True):
            assert (va.start, va.end, va.perms, va.kind, va.object, va.vmflags) == (
                vb.start, vb.end, vb.perms, vb.kind, vb.object, vb.vmflags)
            assert (va.mapped.mask() == vb.mapped.mask()).all() and (va.written.mask() == vb.written.mask()).all()
    assert back.objects == snap.objects


def thp_snapshot():
    """A process with 8 MiB of MADV_HUGEPAGE memory: a huge page written, a huge zero page read, then
    a 2 MiB range with one 4 KiB page written, and 2 MiB untouched."""
    npages = 8 * MIB >> 12
    mapped = PageSet.from_runs(npages, [0, 1024], [1024, 1])
    written = PageSet.from_runs(npages, [0, 1024], [512, 1])
    heap = _vma(0x7F0000000000, 8 * MIB, "rw-p", present=mapped, written=written, vmflags="rd wr mr mw me ac hg")
    heap.thp = PageSet.from_runs(npages, [0], [1024])
    # 3 PTE tables (two deposited) + 1 PMD table + 1 PUD table
    return _snapshot([_proc(9, [heap], 20)], [])


def test_whatif_replays_transparent_huge_pages():
    doc = whatif(thp_snapshot(), ["linux"], load_profile())
    proc = doc["processes"]["9"]
    assert proc["linux_check"]["verdict"] == "exact"
    assert proc["measured_anon_huge_kb"] == 2048 == proc["policies"]["linux"]["anon_huge_kb"]
    assert proc["policies"]["linux"]["rss_kb"] == 2048 + 4
    # fork copies the small page's PTE and the two huge PMDs (no PTEs)
    assert proc["policies"]["linux"]["fork"]["ptes_copied"] == 1


def test_thp_pages_round_trip_and_older_files_have_none(tmp_path):
    path = tmp_path / "t.npz"
    save(thp_snapshot(), path)
    heap = load(path).processes[0].vmas[0]
    assert heap.thp is not None and (heap.thp.mask() == thp_snapshot().processes[0].vmas[0].thp.mask()).all()
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files if not k.startswith("vma_thp_")}
    older = tmp_path / "older.npz"
    np.savez(older, **arrays)
    assert load(older).processes[0].vmas[0].thp is None


# --- bad snapshot files -------------------------------------------------------------------------

def _bad_files(tmp_path):
    good = tmp_path / "good.npz"
    save(hugetlb_snapshot(), good)
    text = tmp_path / "text.npz"
    text.write_text("hello\n")
    bare = tmp_path / "bare.npz"
    np.savez(bare, x=np.zeros(3))
    other = tmp_path / "other.npz"
    with np.load(good) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays["meta"].tobytes())
    np.savez(other, **dict(arrays, meta=np.frombuffer(json.dumps(dict(meta, schema="ptshare.snapshot/99")).encode(),
                                                       dtype=np.uint8)))
    damaged = tmp_path / "damaged.npz"
    np.savez(damaged, **dict(arrays, vma_start=arrays["vma_start"][:1]))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:200])
    return {
        "missing": (tmp_path / "nope.npz", "does not exist"),
        "directory": (tmp_path, "is a directory"),
        "text": (text, "is not a ptshare snapshot (not a numpy .npz archive)"),
        "truncated": (truncated, "is not a ptshare snapshot"),
        "bare": (bare, "is not a ptshare snapshot (no metadata)"),
        "other version": (other, "is a snapshot of format 'ptshare.snapshot/99'; this ptshare reads"),
        "damaged": (damaged, "is damaged: ValueError: column vma_start has 1 rows, not 3"),
    }


def test_bad_snapshot_files_raise_snapshot_error(tmp_path):
    for path, message in _bad_files(tmp_path).values():
        with pytest.raises(SnapshotError, match=None) as info:
            load(path)
        assert message in str(info.value)


def test_whatif_bad_snapshot_one_line_exit_2(tmp_path, capsys):
    for path, message in _bad_files(tmp_path).values():
        assert main(["whatif", str(path)]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.count("\n") == 1 and captured.err.startswith("ptshare: ") and message in captured.err


def test_whatif_cli_json_contract(tmp_path, capsys):
    path = tmp_path / "h.npz"
    save(hugetlb_snapshot(), path)
    assert main(["whatif", str(path), "--policy", "linux,shared-pt", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "ptshare.whatif/1"
    assert set(doc["processes"]) == {"100", "101", "102"}
    proc = doc["processes"]["100"]
    assert proc["comm"] == "p100" and proc["measured_vmpte_kb"] == 12
    assert set(proc["policies"]) == {"linux", "shared-pt"} and proc["policies"]["shared-pt"]["vmpte_kb"] == 12
    assert doc["system"]["measured_pagetables_kb"] == 1000
    assert set(doc["system"]["policies"]) == {"linux", "shared-pt"}
    assert doc["system"]["policies"]["linux"]["pagetables_kb"] == 32
    assert main(["whatif", str(path), "--policy", "linux"]) == 0
    table = capsys.readouterr().out
    assert "linux reproduces VmPTE exactly for 3 of 3 processes" in table
    assert "hugetlb PMD sharing saves 16 kB" in table


def test_whatif_unknown_policy(tmp_path, capsys):
    path = tmp_path / "h.npz"
    save(hugetlb_snapshot(), path)
    assert main(["whatif", str(path), "--policy", "linux,nope"]) == 2
    assert capsys.readouterr().err == "ptshare: unknown policy 'nope'; known policies: " + ", ".join(
        __import__("ptshare").POLICIES) + "\n"


def test_zip_without_meta_is_not_a_snapshot(tmp_path):
    path = tmp_path / "z.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(SnapshotError, match="is not a ptshare snapshot"):
        load(path)


def test_whatif_leaves_out_a_mapping_it_cannot_model():
    """A hugetlb VMA not on a 2 MiB boundary cannot exist in the model: it is left out, with a warning."""
    seg = ObjectSnap("00:10", 1, "/anon_hugepage (deleted)", "hugetlb", 2 * MIB)
    vmas = [_vma(0x7F0000001000, 2 * MIB, "rw-s", kind="hugetlb", obj=0, written=PageSet.empty(512),
                 vmflags="rd wr sh ht"),
            _vma(0x7F0000400000, 4096, "rw-p")]
    doc = whatif(_snapshot([_proc(9, vmas, 12)], [seg]), ["linux"], load_profile())
    assert doc["warnings"] == ["process 9: /obj0 at 0x7f0000001000 left out: EINVAL: hugetlb MAP_FIXED address "
                               "0x7f0000001000 is not 2 MiB-aligned"]
    assert doc["processes"]["9"]["policies"]["linux"]["vmpte_kb"] == 12


# --- damaged fields of a real snapshot ----------------------------------------------------------

@pytest.fixture(scope="module")
def own_snapshot(tmp_path_factory):
    """A snapshot of this test process, as (path, metadata, arrays) to damage copies of."""
    import os
    import sys

    from ptshare.snapshot import take

    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc: Linux only")
    path = tmp_path_factory.mktemp("own") / "own.npz"
    save(take([os.getpid()]), path)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return path, json.loads(arrays.pop("meta").tobytes()), arrays


def _damaged_copy(tmp_path, meta, arrays):
    path = tmp_path / "damaged.npz"
    np.savez(path, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    return path


def test_real_snapshot_loads_undamaged(own_snapshot):
    path, meta, arrays = own_snapshot
    snap = load(path)
    assert [p.pid for p in snap.processes] == [meta["processes"][0]["pid"]]
    assert sum(len(p.vmas) for p in snap.processes) == len(arrays["vma_start"]) > 0


def _with_perms(meta, arrays, perms):
    meta["strings"][arrays["vma_perms"][0]] = perms


def _with(key, value):
    return lambda meta, arrays: meta.__setitem__(key, value)


def _with_proc(key, value):
    return lambda meta, arrays: meta["processes"][0].__setitem__(key, value)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda m, a: _with_perms(m, a, ""), r"process \d+, VMA 0x[0-9a-f]+: perms '' must be 4 characters like 'rw-p'"),
    (lambda m, a: _with_perms(m, a, "rwxq"), r"process \d+, VMA 0x[0-9a-f]+: perms 'rwxq' must be 4 characters"),
    (_with("meminfo", "x"), r"metadata: meminfo must be a JSON object, not 'x'"),
    (_with("problems", 1), r"metadata: problems must be a list, not 1"),
    (_with_proc("status", [1]), r"process \d+: status must be a JSON object, not \[1\]"),
    (_with_proc("cmdline", "bash"), r"process \d+: cmdline must be a list, not 'bash'"),
    (_with_proc("pid", True), r"process number 0: pid must be an integer of at least 1, not True"),
    (lambda m, a: m["objects"][0].__setitem__("size", 1.5), r"object 0: size must be an integer of at least 0"),
])
def test_damaged_field_names_it(own_snapshot, tmp_path, damage, message):
    _, meta, arrays = own_snapshot
    meta, arrays = json.loads(json.dumps(meta)), {k: v.copy() for k, v in arrays.items()}
    damage(meta, arrays)
    with pytest.raises(SnapshotError, match=r"damaged\.npz is damaged: " + message):
        load(_damaged_copy(tmp_path, meta, arrays))


def test_damaged_arrays_name_the_vma(own_snapshot, tmp_path):
    _, meta, arrays = own_snapshot
    bad = dict(arrays, vma_mapped_len=arrays["vma_mapped_len"][:-1])  # a column shorter than the others
    with pytest.raises(SnapshotError, match=r"column vma_mapped_len has \d+ rows, not \d+"):
        load(_damaged_copy(tmp_path, meta, bad))
    start = arrays["vma_start"].copy()
    start[0] += 1  # not page-aligned
    with pytest.raises(SnapshotError, match=r"process \d+, VMA 0x[0-9a-f]+: start 0x[0-9a-f]+ and end 0x[0-9a-f]+ "
                       "must be page-aligned"):
        load(_damaged_copy(tmp_path, meta, dict(arrays, vma_start=start)))
    i = int(np.flatnonzero(arrays["vma_mapped_enc"] != EMPTY)[0])
    length = arrays["vma_mapped_len"].copy()
    length[i] += 2  # the pages of a VMA reach past its runs or bitmap
    with pytest.raises(SnapshotError, match=rf"VMA {int(arrays['vma_start'][i]):#x}: mapped pages: "):
        load(_damaged_copy(tmp_path, meta, dict(arrays, vma_mapped_len=length)))


def test_whatif_damaged_field_one_line_exit_2(own_snapshot, tmp_path, capsys):
    _, meta, arrays = own_snapshot
    meta = json.loads(json.dumps(meta))
    _with_perms(meta, arrays, "")
    path = _damaged_copy(tmp_path, meta, arrays)
    assert main(["whatif", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"ptshare: {path} is damaged: process ") and "perms ''" in err


def test_whatif_mshare_places_shared_shmem_in_regions():
    """Under mshare, shmem that several processes map shared is assumed to be in an mshare region of
    its own: the host's tables once, no process's VmPTE, and a new attacher takes one fault."""
    seg = ObjectSnap("00:01", 1, "/dev/shm/seg", "shmem", GIB)
    # Four processes map the segment (at different addresses: the region ignores them); the first
    # has written it, the others read part of it.
    procs = [_proc(200 + n, [_vma(0x7F0000000000 - n * GIB, GIB, "rw-s", kind="shmem", obj=0,
                                  written=PageSet.empty(GIB >> 12),
                                  present=PageSet.from_runs(GIB >> 12, [0], [(GIB >> 12) // (n + 1)]))], 2060)
             for n in range(4)]
    doc = whatif(_snapshot(procs, [seg]), ["linux", "mshare"], load_profile())
    linux, mshare = doc["system"]["policies"]["linux"], doc["system"]["policies"]["mshare"]
    # Linux: each process its own 512 PTE tables (or fewer), a PMD and a PUD table.
    assert linux["vmpte_total_kb"] == 4 * sum(-(-512 // (n + 1)) + 2 for n in range(4))
    assert mshare["vmpte_total_kb"] == 0
    # mshare: four PGDs, and the host's PGD, PUD, PMD and 512 PTE tables.
    assert mshare["pagetables_kb"] == 4 * (4 + 1 + 1 + 1 + 512)
    assert doc["system"]["savings"]["mshare"]["pagetables_kb"] == linux["pagetables_kb"] - mshare["pagetables_kb"]
    for pid in ("200", "203"):
        assert doc["processes"][pid]["policies"]["mshare"]["warmup"]["faults"] == 1  # the link
        assert doc["processes"][pid]["policies"]["linux"]["warmup"]["faults"] > 1
