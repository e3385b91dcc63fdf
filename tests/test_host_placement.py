"""Where the kernel puts a mapping when it chooses (mmap with no address), against the alignment
rules the simulator models (ptshare.mm.mmap): anonymous private memory of a 2 MiB multiple and
ext4 files (by file offset) are PMD-aligned, hugetlb is 2 MiB-aligned, shmem and shared anonymous
memory are not aligned.  The host backend itself puts every mapping where the simulator says, so
these rules are checked here, in a fresh process of their own.
"""

import json
import os
import subprocess
import sys
import tempfile

import pytest

from ptshare import System
from ptshare.host import syscalls
from ptshare.host.backend import host_problem
from ptshare.host.objects import HostObjects
from ptshare.scenario.model import ObjectSpec

PROBLEM = host_problem(need_root=True)
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")

MiB = 1 << 20
PMD = 2 * MiB
RW = syscalls.PROT_READ | syscalls.PROT_WRITE
TRIALS = 8


@pytest.fixture(scope="module")
def files():
    """A /dev/shm file, an ext4 file and a hugetlbfs file of 16 MiB each."""
    objects = HostObjects([ObjectSpec("shmem", "shmem", 16 * MiB), ObjectSpec("file", "file", 16 * MiB),
                           ObjectSpec("hugetlb", "hugetlb", 16 * MiB)], hugepages=8 * TRIALS)
    yield objects.fds
    objects.close()


CASES = {
    # name: (length, shared, object, file offset, rule): True = 2 MiB-aligned; an int = aligned
    # to the file offset modulo 2 MiB; False = not aligned: put right under the mapping above it.
    "anon private, 2 MiB multiple": (8 * MiB, False, None, 0, True),
    "anon private, not a 2 MiB multiple": (8 * MiB + 4096, False, None, 0, False),
    "anon shared": (8 * MiB, True, None, 0, False),
    "shmem file": (8 * MiB, True, "shmem", 0, False),
    "ext4 file at offset 0": (8 * MiB, True, "file", 0, True),
    "ext4 file at offset 12 KiB": (8 * MiB, True, "file", 12 * 1024, 12 * 1024),
    "hugetlb": (8 * MiB, True, "hugetlb", 0, True),
}


# The kernel side runs in a fresh process, whose address space is packed below its mmap_base (a
# long-lived one, like this test process, has large holes wherever big arrays were freed).
KERNEL_SIDE = """
import json, sys
from ptshare.host import syscalls
length, shared, fd, offset, trials = json.loads(sys.argv[1])

def mapped(addr):
    for line in open("/proc/self/maps"):
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if lo <= addr < hi:
            return True
    return False

flags = syscalls.MAP_SHARED if shared else syscalls.MAP_PRIVATE
if fd < 0:
    flags |= syscalls.MAP_ANONYMOUS
out = []
for n in range(trials):
    syscalls.mmap(0, (256 + 2 * n + 1) * 4096, 0, syscalls.MAP_PRIVATE | syscalls.MAP_ANONYMOUS)
    addr = syscalls.mmap(0, length, 3, flags, fd, offset)
    out.append((addr, mapped(addr + length)))
print(json.dumps(out))
"""


def _kernel_places(fds, length, shared, obj, offset) -> list[tuple[int, bool]]:
    """Where the kernel puts the mapping after a spacer of odd size (so that the top of the gap is
    not aligned), and whether it put it right under the mapping above."""
    fd = -1 if obj is None else fds[obj]
    done = subprocess.run([sys.executable, "-c", KERNEL_SIDE, json.dumps([length, shared, fd, offset, TRIALS])],
                          pass_fds=() if fd < 0 else (fd,), capture_output=True, text=True, check=True)
    return [tuple(p) for p in json.loads(done.stdout)]


def _simulator_places(length, shared, obj, offset) -> list[tuple[int, bool]]:
    s = System("linux", seed=3)
    if obj is not None:
        s.create_object("o", obj, 16 * MiB)
    s.spawn("p")
    mm = s.task("p").mm
    out = []
    for n in range(TRIALS):
        s.mmap("p", (256 + 2 * n + 1) * 4096, prot="")
        addr = s.mmap("p", length, object=None if obj is None else "o", offset=offset, shared=shared)
        out.append((addr, mm.vma_lookup(addr + length) is not None or addr + length == mm.mmap_base))
    return out


def _follows(places: list[tuple[int, bool]], rule) -> bool:
    if rule is True:
        return all(a % PMD == 0 for a, _ in places)
    if rule is False:
        return all(flush for _, flush in places) and any(a % PMD for a, _ in places)
    return all(a % PMD == rule for a, _ in places)


@pytest.mark.parametrize("case", list(CASES))
def test_kernel_placement_follows_the_modelled_alignment(files, case):
    length, shared, obj, offset, rule = CASES[case]
    kernel = _kernel_places(files, length, shared, obj, offset)
    simulator = _simulator_places(length, shared, obj, offset)
    assert _follows(kernel, rule), [(hex(a), flush) for a, flush in kernel]
    assert _follows(simulator, rule), [(hex(a), flush) for a, flush in simulator]


def test_mremap_grows_in_place_across_mmap_base():
    """Linux grows a mapping in place whenever the addresses after it are free and below TASK_SIZE
    (vma_expandable), also above mmap_base, where nothing is usually mapped."""
    top = 0x700000000000
    addr = syscalls.mmap(top - 8 * MiB, 8 * MiB, RW,
                         syscalls.MAP_PRIVATE | syscalls.MAP_ANONYMOUS | syscalls.MAP_FIXED_NOREPLACE)
    kernel = syscalls.mremap(addr, 8 * MiB, 12 * MiB, syscalls.MREMAP_MAYMOVE)
    syscalls.munmap(kernel, 12 * MiB)
    assert kernel == addr
    s = System("linux", aslr_bits=0, mmap_base=top)
    s.spawn("p")
    a = s.mmap("p", 8 * MiB)
    assert a == addr
    assert s.mremap("p", a, 8 * MiB, 12 * MiB) == kernel


def test_the_files_are_gone(files):
    """The objects are unlinked as soon as they are open: nothing named is left behind."""
    names = [n for n in os.listdir("/dev/shm") if n.startswith(f"ptshare-{os.getpid()}-")]
    names += [n for n in os.listdir(tempfile.gettempdir()) if n.startswith("ptshare-hugetlbfs-")]
    assert names == []
