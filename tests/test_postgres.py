"""A real PostgreSQL server under pgbench load: ``ptshare whatif`` under linux reproduces the VmPTE of the
postmaster and of every backend, and says what shared-pt would save.

It needs Debian's PostgreSQL server (``make deps`` installs it; when it is missing the test is
skipped and says why, and under CI it fails).  The set-up runs a private cluster in a temporary
directory as the ``postgres`` user (the server refuses to run as root): initdb, a free local port,
shared_buffers = 512MB, huge_pages = off.  The postmaster is a child of the test, which always
stops it (and so its backends) and removes the cluster's files.
"""

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ptshare.cli.main import main
from ptshare.snapshot import load
from stopping import stopped

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PostgreSQL test: Linux only"),
    pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0,
                       reason="PostgreSQL test: needs root (to run the server as postgres and read its tables)"),
]

PG_ROOT = Path("/usr/lib/postgresql")
PROGRAMS = ("initdb", "postgres", "pgbench")
CLIENTS = 24
SCALE = 10  # pgbench -i -s 10: about 160 MB of tables, inside the 512 MB of shared buffers


def pg_bin() -> Path | None:
    """The newest installed server's bin directory with every program the test needs."""
    versions = sorted(PG_ROOT.glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    for path in reversed(versions):
        if all((path / prog).exists() for prog in PROGRAMS):
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A private PostgreSQL cluster in ``root`` (data in root/data, socket in root), run by user postgres."""

    def __init__(self, bindir: Path, root: Path):
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.server: subprocess.Popen | None = None

    def run(self, prog: str, *args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bindir / prog), *args], user="postgres", group="postgres", extra_groups=[],
                              cwd=self.root, capture_output=True, text=True, timeout=timeout, check=True, **kw)

    def start(self) -> None:
        """initdb, then the postmaster as a child of this process (so that it is reaped here)."""
        self.run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8",
                 "--locale=C")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.root}'\n"
                       "shared_buffers = 512MB\nhuge_pages = off\nmax_connections = 40\nfsync = off\n"
                       "synchronous_commit = off\nfull_page_writes = off\n")
        with open(self.root / "log", "w") as log:
            self.server = subprocess.Popen([str(self.bindir / "postgres"), "-D", str(self.data)], user="postgres",
                                           group="postgres", extra_groups=[], cwd=self.root, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while not self.ready():
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("PostgreSQL did not start:\n" + (self.root / "log").read_text()[-2000:])
            time.sleep(0.1)

    def ready(self) -> bool:
        """Whether postmaster.pid says the server accepts connections (what pg_ctl -w waits for)."""
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) > 7 and lines[7].strip() == "ready"

    @property
    def postmaster(self) -> int:
        return self.server.pid

    def pgbench(self, *args: str) -> list[str]:
        return [str(self.bindir / "pgbench"), "-h", str(self.root), "-p", str(self.port), *args, "postgres"]

    def stop(self) -> None:
        """Fast shutdown; immediate, then SIGKILL, if it hangs.  The backends follow the postmaster out;
        any process still running from this cluster's directory is killed last."""
        if self.server is not None:
            for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
                if self.server.poll() is not None:
                    break
                self.server.send_signal(sig)
                try:
                    self.server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    continue
        for pid in self.leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def leftovers(self) -> list[int]:
        """Processes whose command line names this cluster's directory."""
        mine = str(self.root).encode()
        out = []
        for name in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError), open(f"/proc/{name}/cmdline", "rb") as f:
                if mine in f.read():
                    out.append(int(name))
        return out


@pytest.fixture(scope="module")
def cluster(need):
    bindir = need(pg_bin(), f"PostgreSQL's server ({', '.join(PROGRAMS)} under {PG_ROOT}/VERSION/bin)")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        need(None, "the 'postgres' user that Debian's PostgreSQL package creates")
    root = Path(tempfile.mkdtemp(prefix="ptshare-pg-"))
    shutil.chown(root, "postgres", "postgres")
    pg = Cluster(bindir, root)
    try:
        pg.start()
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
        assert not root.exists() and not pg.leftovers(), f"the cluster in {root} was not cleaned up"


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    out = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{name}/stat") as f:
            if int(f.read().rpartition(")")[2].split()[1]) == pid:
                out.append(int(name))
    return out


def client_backends(postmaster: int) -> list[int]:
    """The postmaster's children serving a client connection ("postgres: USER DB [local] ...")."""
    out = []
    for pid in children(postmaster):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"[local]" in f.read():
                out.append(pid)
    return out


@contextlib.contextmanager
def quiesced(postmaster: int, bench: int):
    """The server quiesced: pgbench, the postmaster (so that it forks no new backend) and then every
    child of the postmaster stopped with SIGSTOP, so that the kernel's figures and the snapshot are of
    one instant however loaded the machine is; all continued (SIGCONT) on the way out, whatever happens."""
    with stopped([bench, postmaster]), stopped(children(postmaster)):
        yield


def snapshot_under_load(pg: Cluster, path: Path) -> None:
    """Run pgbench with CLIENTS connections, then, with the server stopped for the instant of the read,
    snapshot the postmaster and its children: what the backends built under load, read at rest."""
    pg.run("pgbench", "-h", str(pg.root), "-p", str(pg.port), "-i", "-q", "-s", str(SCALE), "postgres", timeout=300)
    bench = subprocess.Popen(pg.pgbench("-c", str(CLIENTS), "-j", "2", "-T", "600"), user="postgres",
                             group="postgres", extra_groups=[], cwd=pg.root, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(client_backends(pg.postmaster)) < CLIENTS:
            assert bench.poll() is None, "pgbench exited early"
            assert time.monotonic() < deadline, "pgbench did not connect its clients within five minutes"
            time.sleep(0.2)
        time.sleep(5)  # let the backends touch the shared buffers
        assert len(client_backends(pg.postmaster)) >= 20
        with quiesced(pg.postmaster, bench.pid):
            assert main(["snapshot", "--pid", str(pg.postmaster), "--children", "-o", str(path)]) == 0
    finally:
        bench.terminate()
        try:
            bench.wait(timeout=30)
        except subprocess.TimeoutExpired:
            bench.kill()
            bench.wait()


def test_whatif_reproduces_postgres_vmpte(cluster, tmp_path, capsys):
    path = tmp_path / "pg.npz"
    snapshot_under_load(cluster, path)
    capsys.readouterr()
    snap = load(path)
    assert not snap.partial, snap.problems
    backends = [p for p in snap.processes if "[local]" in p.command]
    assert len(backends) >= 20
    buffers = [o for o in snap.objects if o.kind == "shmem" and o.size >= 512 << 20]
    assert len(buffers) == 1, snap.objects  # the main shared memory: MAP_SHARED|MAP_ANONYMOUS, "/dev/zero"

    assert main(["whatif", str(path), "--policy", "linux,shared-pt", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert not [w for w in snap.warnings if "changed during each of" in w], snap.warnings  # read at rest
    for proc in doc["processes"].values():
        assert proc["linux_check"]["verdict"] == "exact", (proc["command"], proc["linux_check"])
    for backend in backends:
        proc = doc["processes"][str(backend.pid)]
        assert proc["policies"]["linux"]["vmpte_kb"] >= 64  # it maps a good part of the buffers
        assert proc["policies"]["shared-pt"]["pt_shared_kb"] > 0
    saving = doc["system"]["savings"]["shared-pt"]
    assert saving["pagetables_kb"] > 0 and saving["percent"] > 20
    print(f"\nPostgreSQL: {len(doc['processes'])} processes; linux check {doc['system']['linux_check']}; "
          f"shared-pt saves {saving['pagetables_kb']} kB ({saving['percent']}%)", file=sys.stderr)
