"""Fresh guest memory, and keeping its cost out of the measurements.

In a virtual machine the first write to a guest-physical page the hypervisor has not backed yet
(or has taken back) is a fault in the hypervisor as well as in the guest.  Memory the guest frees
does not stay backed: with virtio-balloon free page reporting (``Free page reporting enabled`` in
dmesg; ``/sys/module/page_reporting``) the guest hands free blocks back to the host, which
discards them, within seconds to a minute.  Measured on the project's Firecracker guests (Linux
6.18, AMD EPYC), an anonymous write fault that gets such a page costs about 11 us instead of
1.3 us: the hypervisor's share is eight times the kernel's own.

A host-backend run gets whatever pages the guest's allocator hands out -- recently freed ones
first (the allocator puts reported blocks at the tail of its free lists), so its faults pay the
hypervisor or not depending on what the machine did in the seconds before.  The cost model
prices the kernel alone, as the default profile's header says, so before each run calibration
and ``bench --vs-host`` write as much fresh memory as the run will need and free it again
(:func:`pre_touch`): the run's pages are then pages the guest touched a moment ago.
"""

from __future__ import annotations

import mmap

from .backend import FORKED_WORKER_KB, SPAWNED_WORKER_KB
from .plan import Plan

HEADROOM = 1.25  # the run's own page tables, the interpreters' heaps, what the estimate misses


def run_footprint(plan: Plan) -> int:
    """Bytes of memory a host run of ``plan`` allocates at its peak, with headroom."""
    kb = plan.peak_kb + plan.hugepages * 2048 + plan.spawned * SPAWNED_WORKER_KB + plan.forked * FORKED_WORKER_KB
    return int(kb * 1024 * HEADROOM)


def pre_touch(nbytes: int) -> None:
    """Write ``nbytes`` of anonymous memory (``MAP_POPULATE`` has the kernel do it, with no fault
    per page) and free it, so that the next allocations get pages the hypervisor has backed."""
    if nbytes <= 0:
        return
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
    mmap.mmap(-1, nbytes, flags=flags).close()
