"""ptshare snapshot on live processes of this machine, and whatif checked against the kernel's VmPTE."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ptshare.cli.main import main
from ptshare.snapshot import load, take
from ptshare.snapshot import pagemap as pagemap_module
from ptshare.snapshot import reader as reader_module
from ptshare.snapshot.procfs import NoAccess
from stopping import stopped

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc: Linux only")

# A process tree: a parent with a shared anonymous segment and a private heap, and children that read
# scattered pages of the segment.  Every process says "ready", then waits for stdin to close.
TREE = textwrap.dedent("""\
    import ctypes, mmap, os, random, sys
    n, mib = int(sys.argv[1]), int(sys.argv[2])
    ctypes.CDLL(None).prctl(15, b"ptsnaptest")  # PR_SET_NAME: a comm that --match can find
    seg = mmap.mmap(-1, mib << 20, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    for i in range(0, mib << 20, 4096):
        seg[i] = 1
    heap = mmap.mmap(-1, 8 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    heap.madvise(mmap.MADV_NOHUGEPAGE)
    for i in range(0, 4 << 20, 4096):
        heap[i] = 1
    for k in range(n):
        if os.fork() == 0:
            rnd = random.Random(k)
            for _ in range(mib * 64):
                _ = seg[rnd.randrange(mib * 256) * 4096]
            os.write(1, b"%d\\n" % os.getpid())  # one write: lines of several processes never mix
            sys.stdin.read()
            os._exit(0)
    os.write(1, b"%d\\n" % os.getpid())
    sys.stdin.read()
""")


class Tree:
    """The process tree above; the parent is ``pid``, and ``pids`` lists them all."""

    def __init__(self, children: int, mib: int):
        self.proc = subprocess.Popen([sys.executable, "-c", TREE, str(children), str(mib)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.pid = self.proc.pid
        self.pids = [int(self.proc.stdout.readline()) for _ in range(children + 1)]
        assert self.pid in self.pids

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)  # the session this test started, children included


@pytest.fixture
def tree():
    t = Tree(children=4, mib=64)
    yield t
    t.close()


def _whatif(path, capsys, policies="linux,shared-pt"):
    assert main(["whatif", str(path), "--policy", policies, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_snapshot_and_whatif_reproduce_vmpte(tree, tmp_path, capsys):
    path = tmp_path / "tree.npz"
    assert main(["snapshot", "--pid", str(tree.pid), "--children", "-o", str(path)]) == 0
    out = capsys.readouterr()
    assert out.out.startswith(f"{path}: 5 processes")
    snap = load(path)
    assert sorted(p.pid for p in snap.processes) == sorted(tree.pids) and not snap.partial
    segs = [o for o in snap.objects if o.path.startswith("/dev/zero")]
    assert len(segs) == 1 and segs[0].kind == "shmem" and segs[0].size == 64 << 20
    doc = _whatif(path, capsys)
    for pid, proc in doc["processes"].items():
        assert proc["linux_check"]["verdict"] == "exact", (pid, proc["linux_check"])
        assert proc["policies"]["linux"]["vmpte_kb"] == proc["measured_vmpte_kb"]
    assert doc["system"]["linux_check"]["exact"] == 5
    # 5 processes map the segment, placed without 2 MiB alignment: 31 of its 32 PTE tables cover their
    # whole span and can be shared; shared-pt keeps one set
    assert doc["system"]["savings"]["shared-pt"]["pagetables_kb"] >= 4 * 31 * 4
    parent = doc["processes"][str(tree.pid)]
    assert parent["policies"]["linux"]["fork"]["ptes_copied"] >= 1024  # the written half of the heap
    assert parent["policies"]["shared-pt"]["warmup"]["faults"] < parent["policies"]["linux"]["warmup"]["faults"]
    if snap.meta["pfns_visible"]:
        assert all(p.anon_shared_kb > 0 for p in snap.processes)  # children share the heap's pages (COW)


def test_snapshot_by_match(tree, tmp_path, capsys):
    path = tmp_path / "m.npz"
    assert main(["snapshot", "--match", "ptsnaptest", "-o", str(path)]) == 0
    assert sorted(p.pid for p in load(path).processes) == sorted(tree.pids)


@pytest.mark.parametrize("method", ["scan", "read"])
def test_methods_agree(tree, method):
    snap = take([tree.pid], method=method)
    assert snap.meta["method"] == f"pagemap-{method}" and not snap.partial
    proc = snap.processes[0]
    assert sum(v.mapped.count() for v in proc.vmas) * 4 >= proc.status["VmRSS"] - 64  # the interpreter moves a bit


def test_bad_pid(capsys):
    with open("/proc/sys/kernel/pid_max") as f:
        beyond = int(f.read()) + 1
    assert main(["snapshot", "--pid", str(beyond), "-o", "/dev/null"]) == 2
    assert capsys.readouterr().err == f"ptshare: no process with pid {beyond}\n"
    assert main(["snapshot", "--pid", "0", "-o", "/dev/null"]) == 2
    assert capsys.readouterr().err == "ptshare: --pid must be a positive process id, not 0\n"


def test_usage_errors(capsys, tmp_path):
    assert main(["snapshot", "--match", "no-such-program-anywhere", "-o", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == "ptshare: no process matches 'no-such-program-anywhere' (its command name or " \
                                      "program name)\n"
    assert main(["snapshot", "--match", "x", "--children", "-o", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == "ptshare: --children needs --pid\n"
    assert main(["snapshot", "--pid", str(os.getpid()), "-o", str(tmp_path / "no" / "x")]) == 2
    assert capsys.readouterr().err == f"ptshare: cannot write {tmp_path}/no/x: {tmp_path}/no is not a directory\n"
    assert main(["snapshot", "--pid", str(os.getpid()), "--jobs", "0", "-o", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == "ptshare: --jobs must be at least 1, not 0\n"


def test_kernel_thread(capsys, tmp_path):
    assert main(["snapshot", "--pid", "2", "-o", str(tmp_path / "x")]) == 2  # kthreadd
    assert capsys.readouterr().err == ("ptshare: nothing to snapshot: process 2 has no user address space "
                                       "(a kernel thread, or it is exiting)\n")
    assert not (tmp_path / "x").exists()


def _kill_during_smaps(monkeypatch, victim: int) -> None:
    """Make ``victim`` die between the first reads of it and its smaps."""
    real = reader_module.read_smaps

    def read_smaps(pid):
        if pid == victim:
            os.kill(victim, signal.SIGKILL)
            for _ in range(500):
                with open(f"/proc/{victim}/stat") as f:
                    if f.read().rpartition(")")[2].split()[0] in "ZX":
                        break
                time.sleep(0.01)
        return real(pid)

    monkeypatch.setattr(reader_module, "read_smaps", read_smaps)


def test_process_exits_mid_read_makes_a_partial_snapshot(tree, tmp_path, capsys, monkeypatch):
    victim = next(p for p in tree.pids if p != tree.pid)
    _kill_during_smaps(monkeypatch, victim)
    path = tmp_path / "p.npz"
    assert main(["snapshot", "--pid", str(tree.pid), "--children", "-o", str(path)]) == 0
    out = capsys.readouterr()
    assert f"ptshare: partial snapshot: process {victim} exited while being read\n" in out.err
    assert out.out.rstrip().endswith("-- PARTIAL")
    snap = load(path)
    assert snap.partial and snap.problems == [f"process {victim} exited while being read"]
    assert victim not in [p.pid for p in snap.processes] and len(snap.processes) == 4
    assert main(["whatif", str(path), "--policy", "linux"]) == 0
    out = capsys.readouterr()
    assert f"PARTIAL SNAPSHOT: process {victim} exited while being read" in out.out
    assert f"ptshare: partial snapshot: process {victim} exited while being read\n" in out.err


def test_only_process_exits_mid_read(tree, tmp_path, capsys, monkeypatch):
    victim = next(p for p in tree.pids if p != tree.pid)
    _kill_during_smaps(monkeypatch, victim)
    assert main(["snapshot", "--pid", str(victim), "-o", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == f"ptshare: nothing to snapshot: process {victim} exited while being read\n"


def test_permission_error(tree, monkeypatch):
    real = reader_module.read_smaps

    def refused(pid):
        if pid == tree.pid:
            raise NoAccess(pid, "smaps")
        return real(pid)

    monkeypatch.setattr(reader_module, "read_smaps", refused)
    snap = take(tree.pids)
    assert snap.partial and snap.problems == [
        f"no permission to read /proc/{tree.pid}/smaps: run ptshare snapshot as root, or as the user that owns "
        f"process {tree.pid}"]
    assert len(snap.processes) == 4


def test_hidden_frame_numbers(tree, monkeypatch):
    monkeypatch.setattr(pagemap_module, "own_zero_pfn", lambda: 0)
    scan = take([tree.pid], method="scan")
    assert not scan.partial and "page frame numbers are hidden" in scan.warnings[0]
    assert scan.processes[0].anon_shared_kb is None
    read = take([tree.pid], method="read")
    assert read.partial and "zero-page mappings cannot be told from anonymous memory" in read.problems[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_unprivileged_reader(tree):
    """As user nobody: root's processes are refused; its own are read, without frame numbers."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            import ctypes

            ctypes.CDLL(None).prctl(4, 1)  # PR_SET_DUMPABLE: let this user open its own /proc files
            refused = take([tree.pid])
            own = take([os.getpid()], method="read")
            result = {"refused": refused.problems, "own": own.problems, "processes": len(own.processes)}
            os.write(w, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        result = json.loads(f.read())
    os.waitpid(child, 0)
    assert result["refused"] == [f"no permission to read /proc/{tree.pid}/smaps: run ptshare snapshot as root, "
                                 f"or as the user that owns process {tree.pid}"]
    assert result["processes"] == 1
    assert "page frame numbers are hidden" in result["own"][0]


def test_scan_in_small_vectors_matches_reading_every_entry(tree, monkeypatch):
    """PAGEMAP_SCAN returns at most a vector of runs per call; the runs of many calls, and the
    entries read one by one, describe the same pages."""
    child = next(p for p in tree.pids if p != tree.pid)
    monkeypatch.setattr(pagemap_module, "_VEC_LEN", 7)
    # stopped, so that the child's own interpreter (which may still be allocating on its way into
    # stdin.read()) changes nothing between the two reads
    with stopped([child]):
        small = take([child], method="scan").processes[0]
        read = take([child], method="read").processes[0]
    assert [v.start for v in small.vmas] == [v.start for v in read.vmas]
    runs = 0
    for a, b in zip(small.vmas, read.vmas, strict=True):
        assert a.mapped.count() <= a.npages
        assert (a.mapped.mask() == b.mapped.mask()).all(), a.path
        assert (a.written.mask() == b.written.mask()).all(), a.path
        runs += len(a.mapped.runs()[0])
    assert runs > 10 * 7  # many calls


# A process with MADV_HUGEPAGE memory: 3 transparent huge pages written, 2 huge zero pages read, the
# rest of the 16 MiB untouched (the kernel places a mapping of a multiple of 2 MiB 2 MiB-aligned).
THP = textwrap.dedent("""\
    import mmap, os, sys
    heap = mmap.mmap(-1, 16 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    heap.madvise(mmap.MADV_HUGEPAGE)
    for i in range(0, 6 << 20, 4096):
        heap[i] = 1
    for i in range(6 << 20, 10 << 20, 4096):
        _ = heap[i]
    os.write(1, b"%d\\n" % os.getpid())
    sys.stdin.read()
""")


def _thp_enabled() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


@pytest.mark.skipif(not _thp_enabled(), reason="transparent huge pages are off on this machine")
def test_snapshot_and_whatif_of_transparent_huge_pages(tmp_path, capsys):
    proc = subprocess.Popen([sys.executable, "-c", THP], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        pid = int(proc.stdout.readline())
        path = tmp_path / "thp.npz"
        assert main(["snapshot", "--pid", str(pid), "-o", str(path)]) == 0
        capsys.readouterr()
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
    snap = load(path)
    (heap,) = [v for v in snap.processes[0].vmas if v.end - v.start == 16 << 20]
    assert heap.thp is not None and heap.thp.count() == 5 * 512
    assert heap.zero_pages == 2 * 512 and heap.written.count() == 3 * 512
    doc = _whatif(path, capsys, policies="linux")
    got = doc["processes"][str(pid)]
    assert got["measured_anon_huge_kb"] == 6 << 10
    linux = got["policies"]["linux"]
    assert linux["anon_huge_kb"] == 6 << 10  # the replay maps the huge pages as huge pages
    assert got["linux_check"]["verdict"] == "exact", got["linux_check"]
    assert linux["vmpte_kb"] == got["measured_vmpte_kb"]
