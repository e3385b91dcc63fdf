"""The measured calls (ptshare.host.measure): their machine code is what measure.s says, and they
count exactly the faults of the work they do, and nothing else."""

import shutil
import subprocess
from pathlib import Path

import pytest

from ptshare.host import syscalls
from ptshare.host.backend import host_problem
from ptshare.host.measure import CODE, ENTRIES, SYS_MUNMAP, Meter

PROBLEM = host_problem()
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")

SOURCE = Path(__file__).resolve().parents[1] / "src" / "ptshare" / "host" / "measure.s"
MiB = 1 << 20


def test_the_code_is_measure_s_assembled(tmp_path, need):
    need(shutil.which("as") and shutil.which("objcopy") and shutil.which("nm"),
         "binutils (as, objcopy and nm, to rebuild measure.s)")
    obj, binary = tmp_path / "measure.o", tmp_path / "measure.bin"
    subprocess.run(["as", str(SOURCE), "-o", str(obj)], check=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(obj), str(binary)], check=True)
    assert binary.read_bytes()[: len(CODE)] == CODE
    symbols = subprocess.run(["nm", str(obj)], check=True, capture_output=True, text=True).stdout.split("\n")
    where = {parts[2]: int(parts[0], 16) for parts in (line.split() for line in symbols) if len(parts) == 3}
    assert {name: where[name] for name in ENTRIES} == ENTRIES


@pytest.fixture(scope="module")
def meter():
    m = Meter()
    yield m
    m.close()


def test_a_touch_counts_one_fault_per_new_page_and_nothing_else(meter):
    flags = syscalls.MAP_PRIVATE | syscalls.MAP_ANONYMOUS
    addr = syscalls.mmap(0, 4 * MiB, syscalls.PROT_READ | syscalls.PROT_WRITE, flags)
    syscalls.madvise(addr, 4 * MiB, syscalls.MADV_NOHUGEPAGE)
    try:
        assert meter.touch(addr, 1024, False, stride=4096).minflt == 1024  # the zero page
        assert meter.touch(addr, 1024, True, stride=4096).minflt == 1024  # replaced by pages of its own
        assert meter.touch(addr, 1024, True, stride=4096).minflt == 0
        assert meter.touch(addr, 2048, True, stride=2048).minflt == 0  # two accesses per page
        cost = meter.touch(addr + 4096, 512, True, stride=8192)
        assert (cost.minflt, cost.majflt) == (0, 0) and cost.ns > 0
    finally:
        syscalls.munmap(addr, 4 * MiB)


def test_a_listed_touch_goes_in_order(meter):
    import numpy as np

    flags = syscalls.MAP_PRIVATE | syscalls.MAP_ANONYMOUS
    addr = syscalls.mmap(0, 4 * MiB, syscalls.PROT_READ | syscalls.PROT_WRITE, flags)
    syscalls.madvise(addr, 4 * MiB, syscalls.MADV_NOHUGEPAGE)
    offsets = np.array([0, 4096, 0, 8192, 4096 + 17, 3 * MiB], dtype=np.int64)
    try:
        assert meter.touch(addr, len(offsets), True, offsets=offsets.ctypes.data).minflt == 4
    finally:
        syscalls.munmap(addr, 4 * MiB)


def test_a_failed_call_raises_with_its_errno(meter):
    with pytest.raises(OSError, match="munmap") as info:
        meter.syscall(SYS_MUNMAP, 4097, 4096)
    assert info.value.errno == 22
