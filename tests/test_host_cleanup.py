"""A host run leaves nothing behind -- no process, file, mount or huge-page reservation -- when it
ends normally, and when it is interrupted (Ctrl-C, SIGTERM) in the middle."""

import glob
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from processes import interruptible, tagged, wait_gone
from ptshare.host.backend import host_problem
from ptshare.host.objects import meminfo

PROBLEM = host_problem(need_root=True)
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")

# Every kind of object, then a long run of forks (each child is a new worker process).
LONG = """\
name = "long"

[[objects]]
name = "h"
kind = "hugetlb"
size = "32MiB"

[[objects]]
name = "s"
kind = "shmem"
size = "16MiB"

[[objects]]
name = "f"
kind = "file"
size = "16MiB"

[[steps]]
op = "spawn"
pid = "p"

[[steps]]
op = "mmap"
pid = "p"
vma = "h"
object = "h"
shared = true

[[steps]]
op = "mmap"
pid = "p"
vma = "s"
object = "s"
shared = true

[[steps]]
op = "mmap"
pid = "p"
vma = "f"
object = "f"
shared = true

[[steps]]
op = "mmap"
pid = "p"
vma = "heap"
size = "64MiB"

[[steps]]
op = "touch"
pid = "p"
vma = "heap"
access = "write"

[[steps]]
op = "fork"
pid = "p"
child = "c{i}"
repeat = REPEAT
"""


HANG = 600  # seconds: how long a step may take before the test calls it hung (ten times an idle machine's)


def _leftovers() -> dict[str, set[str]]:
    return {
        "files": set(glob.glob("/dev/shm/ptshare-*")) | set(glob.glob("/var/tmp/ptshare-*")),
        "dirs": set(glob.glob(os.path.join(tempfile.gettempdir(), "ptshare-hugetlbfs-*"))),
        "mounts": {line for line in Path("/proc/mounts").read_text().splitlines() if "ptshare" in line},
    }


def _run(tmp_path, repeat: int, interrupt: int | None) -> subprocess.CompletedProcess:
    path = tmp_path / "long.toml"
    path.write_text(LONG.replace("REPEAT", str(repeat)))
    tag = f"PTSHARE_TEST_TAG={uuid.uuid4().hex}"
    env = dict(os.environ, PTSHARE_TEST_TAG=tag.split("=")[1])
    before = _leftovers()
    hugepages = meminfo()["HugePages_Total"]
    proc = subprocess.Popen([sys.executable, "-m", "ptshare", "run", str(path), "--backend", "host"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=interruptible)
    if interrupt is not None:
        deadline = time.monotonic() + HANG  # a guard against a hang, not a speed limit: load only slows this
        while len(tagged(tag)) < 4 and time.monotonic() < deadline:  # the run, p and two children
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(interrupt)
    out, err = proc.communicate(timeout=HANG)
    wait_gone(tag)
    assert meminfo()["HugePages_Total"] == hugepages, "the huge-page reservation was not given back"
    after = _leftovers()
    for kind in before:
        assert after[kind] <= before[kind], f"{kind} left behind: {after[kind] - before[kind]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_a_normal_run_leaves_nothing(tmp_path):
    done = _run(tmp_path, 3, None)
    assert done.returncode == 0, done.stderr
    assert "c2" in done.stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_leaves_nothing(tmp_path, sig):
    done = _run(tmp_path, 200, sig)
    assert done.returncode == 130
    assert done.stderr.strip().splitlines()[-1] == "ptshare: interrupted"
    assert "Traceback" not in done.stderr
