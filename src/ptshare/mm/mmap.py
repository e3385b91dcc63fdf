"""Mapping and unmapping: models mm/mmap.c, mm/vma.c and arch/x86/kernel/sys_x86_64.c.

Placement follows Linux 6.18 on x86-64 with a top-down layout: ``mmap_base`` below the stack
gap (128 MiB without randomisation; 16 GiB of stack randomisation plus ``mmap_rnd_bits`` of
page-granular randomness with it), the highest free gap that fits, and these alignments:

* anonymous private mappings whose length is a multiple of 2 MiB are PMD-aligned
  (``thp_get_unmapped_area``, with the search padded by 2 MiB);
* regular files (ext4, xfs) likewise, by their file offset;
* hugetlbfs mappings are aligned to the huge page size;
* shmem (tmpfs, SysV, shared anonymous) with ``huge=never`` is not aligned.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..arch import PAGE_SHIFT, PAGE_SIZE
from ..errors import MmError
from .huge_memory import split_huge_pmd_address
from .mm_struct import FreeAreaCache, _vm_end
from .pagecache import FILE, MSHARE_ALIGN, SHMEM, AddressSpace
from .unmap import free_pgtables, zap_page_range
from .vma import (
    VM_ACCOUNT,
    VM_DONTEXPAND,
    VM_HUGETLB,
    VM_MAYEXEC,
    VM_MAYREAD,
    VM_MAYSHARE,
    VM_MAYWRITE,
    VM_SHARED,
    VM_SPECIAL,
    VM_WRITE,
    VMA,
)

if TYPE_CHECKING:
    from .kernel import Kernel
    from .mm_struct import MM

STACK_RLIMIT = 8 << 20
STACK_GUARD_GAP = 256 << PAGE_SHIFT
STACK_RND = 0x3FFFFF << PAGE_SHIFT  # stack_maxrandom_size() on 64-bit
GAP_MIN = 128 << 20
MMAP_MIN_ADDR = 65536


def mmap_base(k: Kernel, task_size: int) -> int:
    """Models arch_pick_mmap_layout() -> mmap_base() with arch_mmap_rnd()."""
    randomize = k.aslr_bits > 0
    gap = STACK_RLIMIT + STACK_GUARD_GAP + (STACK_RND if randomize else 0)
    gap = min(max(gap, GAP_MIN), task_size // 6 * 5)
    rnd = int(k.rng.integers(0, 1 << k.aslr_bits)) << PAGE_SHIFT if randomize else 0
    return (task_size - gap - rnd) & ~(PAGE_SIZE - 1)


# --- get_unmapped_area --------------------------------------------------------------------------

def _gaps_below(mm: MM, below: int, low: int, high: int) -> Iterator[tuple[int, int]]:
    """The free gaps of ``mm`` within [low, high) that start below ``below``, highest first
    (O(log n) to find the first)."""
    vmas = mm.vmas
    i = bisect.bisect_left(vmas, below, key=_vm_end)  # vmas[:i] end below ``below``
    while i >= 0:
        gap_start = max(vmas[i - 1].vm_end, low) if i else low
        gap_end = min(vmas[i].vm_start, high) if i < len(vmas) else high
        if gap_end > gap_start:
            yield gap_start, gap_end
        if gap_start <= low:
            return
        i -= 1


def vm_unmapped_area_topdown(mm: MM, length: int, high: int, align_mask: int = 0, align_offset: int = 0,
                             mapped: int | None = None) -> int:
    """The highest address ``a`` below ``high`` with [a, a + length) free and
    ``(a - align_offset) & align_mask == 0``.  Raises ENOMEM if none.  ``mapped``: the fewest
    bytes the caller maps in [a, a + length) (all of them unless it searched with padding).

    Models vm_unmapped_area() top-down.  The kernel finds the gap in O(log n) from the largest gap
    the maple tree keeps below each node; here ``mm.free_area_cache`` says how large the gaps above
    the last mapping placed can be, so that a search for more than that starts there (a shortcut
    for speed: the same address, without visiting every gap above it).
    """
    cache = mm.free_area_cache
    if cache is not None and cache.high == high and length > cache.max_hole:
        below, max_hole = cache.below, cache.max_hole
    else:
        below, max_hole = high, 0
    for gap_start, gap_end in _gaps_below(mm, below, MMAP_MIN_ADDR, high):
        if gap_end - gap_start >= length:
            addr = gap_end - length
            addr -= (addr - align_offset) & align_mask
            if addr >= gap_start:
                left = gap_end - addr - (length if mapped is None else mapped)  # free above the mapping, at most
                mm.free_area_cache = FreeAreaCache(high, addr, max(max_hole, left))
                return addr
        max_hole = max(max_hole, gap_end - gap_start)
    raise MmError("ENOMEM", f"no free range of {length} bytes below {high:#x}")


def _range_free(mm: MM, addr: int, length: int) -> bool:
    return addr >= MMAP_MIN_ADDR and addr + length <= mm.task_size and not mm.vmas_between(addr, addr + length)


def get_unmapped_area(k: Kernel, mm: MM, hint: int, length: int, pgoff: int, obj: AddressSpace | None,
                      shared: bool) -> int:
    """Models __get_unmapped_area() for a mapping without MAP_FIXED."""
    high = mm.mmap_base
    if hint:
        hint &= ~(PAGE_SIZE - 1)
        if obj is not None and obj.is_hugetlb:
            hint = -(-hint // k.geom.hpage_size) * k.geom.hpage_size
        if obj is not None and obj.is_mshare:
            hint = -(-hint // MSHARE_ALIGN) * MSHARE_ALIGN
        if _range_free(mm, hint, length):
            return hint
        if hint > mm.map_window:
            high += mm.task_size - mm.map_window
    pmd = k.geom.pmd_size
    if obj is not None and obj.is_hugetlb:
        return vm_unmapped_area_topdown(mm, length, high, k.geom.hpage_size - 1, pgoff << PAGE_SHIFT)
    if obj is not None and obj.is_mshare:  # msharefs_get_unmapped_area(): aligned to mshare_align
        return vm_unmapped_area_topdown(mm, length, high, MSHARE_ALIGN - 1)
    thp_file = obj is not None and obj.kind == FILE
    thp_anon = obj is None and not shared and length % pmd == 0
    if (thp_file or thp_anon) and not hint:
        addr = _thp_get_unmapped_area(mm, length, pgoff << PAGE_SHIFT if thp_file else 0, pmd, high)
        if addr:
            return addr
    return vm_unmapped_area_topdown(mm, length, high)


def _thp_get_unmapped_area(mm: MM, length: int, off: int, size: int, high: int) -> int:
    """Models __thp_get_unmapped_area(): search with the length padded, then align the result."""
    off_end = off + length
    off_align = -(-off // size) * size
    if off_end <= off_align or off_end - off_align < size:
        return 0
    try:
        ret = vm_unmapped_area_topdown(mm, length + size, high, mapped=length)
    except MmError:
        return 0
    off_sub = (off - ret) & (size - 1)
    if not off_sub:
        return ret + size
    return ret + off_sub


def check_mshare_mmap(mm: MM, obj: AddressSpace, length: int, offset: int, shared: bool, fixed_addr: int) -> None:
    """The mshare series' rules for mapping an msharefs file (v3, ``msharefs_mmap`` and
    ``msharefs_get_unmapped_area``): shared, whole, from offset 0, at a multiple of ``mshare_align``.
    And the model's own: a process maps a region once (v3 would link the same PUD table into it
    twice; here an mm uses a shared table through one entry)."""
    if not shared:
        raise MmError("EINVAL", "an mshare region is mapped MAP_SHARED only")
    if offset or length != obj.region:
        raise MmError("EINVAL", f"an mshare region is mapped whole: offset 0 and length {obj.region:#x} "
                      f"(the region's size), not offset {offset:#x} and length {length:#x}")
    if fixed_addr % MSHARE_ALIGN:
        raise MmError("EINVAL", f"an mshare region's address must be a multiple of 512 GiB, not {fixed_addr:#x}")
    replaced = (fixed_addr, fixed_addr + length) if fixed_addr else (0, 0)
    if any(v.obj is obj and not (replaced[0] <= v.vm_start and v.vm_end <= replaced[1]) for v in mm.vmas):
        raise MmError("EINVAL", f"this process maps mshare region {obj.name!r} already (the model maps a region "
                      "once per process)")


# --- VMA surgery --------------------------------------------------------------------------------

def split_vma(k: Kernel, mm: MM, vma: VMA, addr: int) -> VMA:
    """Models __split_vma(): ``vma`` keeps [vm_start, addr); returns the new VMA for [addr, vm_end).

    A table shared across the split point can no longer be shared by this mm (neither half
    covers it whole), so it lets go of it first (McCracken; hugetlb_split()); a huge PMD across it
    is split.  Where a half's share key changed, partners no longer find the tables through this
    mm (:func:`ptshare.mm.unshare.withdraw_rekeyed`).  An mshare region's VMA is never split
    (``mshare_vm_op_split()``: EINVAL).
    """
    from .unshare import withdraw_rekeyed

    if vma.obj is not None and vma.obj.is_mshare:
        raise MmError("EINVAL", "an mshare region's VMA cannot be split: it is unmapped, or advised, whole")
    unshare_around(k, mm, vma, addr)
    split_huge_pmd_address(k, mm, addr)  # vma_adjust_trans_huge()
    old_keys = [k.policy.share_key(lvl, vma) for lvl in range(3)]
    new = VMA(mm=mm, vm_start=addr, vm_end=vma.vm_end, vm_flags=vma.vm_flags,
              vm_pgoff=vma.vm_pgoff + ((addr - vma.vm_start) >> PAGE_SHIFT), obj=vma.obj,
              anon_vma=vma.anon_vma, anon_vma_chain=vma.anon_vma_chain)  # anon_vma_clone()
    vma.vm_end = addr
    mm.insert_vma(new)
    withdraw_rekeyed(k, mm, (vma, new), old_keys)
    return new


def unshare_around(k: Kernel, mm: MM, vma: VMA, addr: int) -> None:
    """Let go of shared tables whose span contains ``addr`` (a VMA boundary is about to be there)."""
    from .unshare import unshare_tables

    for lvl in range(3):  # PTE, PMD and PUD tables
        span = k.geom.levels[lvl].span
        if addr % span:
            base = addr & ~(span - 1)
            unshare_tables(k, mm, base, base + span, levels=(lvl,))


def unshare_range(k: Kernel, mm: MM, start: int, end: int, *, unmap: bool = False) -> None:
    """Models pt_unshare_range() / hugetlb_unshare_pmds(): let go of every table shared with others
    in [start, end) (about to be unmapped, if ``unmap``); tables this mm alone uses stay, but are no
    longer offered to partners."""
    from .unshare import unshare_tables

    unshare_tables(k, mm, start, end, unmap=unmap)


def is_mergeable_anon_vma(src: VMA, tgt: VMA, check_src: bool) -> bool:
    """Models is_mergeable_anon_vma() (mm/vma.c, Linux 6.18) for ``src`` (the VMA being made,
    changed or moved) merging into its neighbour ``tgt``.

    Where only one of them has an anon_vma, the merged VMA takes it; Linux refuses that when the
    one with it is a fork child (its chain has more than one entry), to keep the root anon_vma's
    lock from covering ever more memory.  ``check_src`` is False for ``vma_merge_extend``
    (mremap growing in place), which merges the new range with no VMA as its source.
    """
    if tgt.anon_vma is None and src.anon_vma is not None:
        return not (check_src and src.is_fork_child)
    if tgt.anon_vma is not None and src.anon_vma is None:
        return not tgt.is_fork_child
    return src.anon_vma is tgt.anon_vma


def _can_merge(lower: VMA, upper: VMA, src: VMA, check_src: bool) -> bool:
    """Models can_vma_merge_after()/can_vma_merge_before(): ``lower`` directly below ``upper``,
    the same flags and object at consecutive offsets, and compatible anon_vmas."""
    tgt = upper if src is lower else lower
    if lower.vm_end != upper.vm_start or lower.vm_flags != upper.vm_flags or lower.obj is not upper.obj:
        return False
    if lower.vm_flags & VM_SPECIAL:
        return False
    if lower.vm_pgoff + ((lower.vm_end - lower.vm_start) >> PAGE_SHIFT) != upper.vm_pgoff:
        return False
    return is_mergeable_anon_vma(src, tgt, check_src)


def vma_merge(k: Kernel, mm: MM, vma: VMA, *, check_src: bool = True, with_prev: bool = True) -> VMA:
    """Merge ``vma`` with its neighbours where Linux would; returns the surviving VMA.

    A merged VMA is a new mapping for the purpose of sharing tables: tables it shared stop being
    offered to partners (and a VMA that can no longer share lets go of them)."""
    before = len(mm.vmas)
    out = _merge(mm, vma, check_src, with_prev)
    if len(mm.vmas) != before:
        unshare_range(k, mm, out.vm_start, out.vm_end)
    return out


def vma_merge_extend(k: Kernel, mm: MM, vma: VMA, delta: int) -> VMA:
    """Models vma_merge_extend(): ``vma`` grows by ``delta`` bytes in place, and the grown VMA
    merges with the one it now touches if it can, as any new range would.

    The grown VMA is a changed mapping for the purpose of sharing tables, as a moved one is: it
    lets go of the tables it shares (McCracken's mremap calls pt_unshare_range()), and takes those
    it alone uses as its own, no longer offered under its old bounds."""
    unshare_range(k, mm, vma.vm_start, vma.vm_end)
    vma.vm_end += delta
    return vma_merge(k, mm, vma, check_src=False, with_prev=False)


def _merge(mm: MM, vma: VMA, check_src: bool, with_prev: bool) -> VMA:
    """Models vma_merge_new_range()/vma_merge_existing_range() once ``vma`` is in place."""
    i = mm.index_of(vma)
    prev = mm.vmas[i - 1] if i > 0 and with_prev else None
    nxt = mm.vmas[i + 1] if i + 1 < len(mm.vmas) else None
    left = prev is not None and _can_merge(prev, vma, vma, check_src)
    right = nxt is not None and _can_merge(vma, nxt, vma, check_src)
    if left and right and prev.anon_vma is not None and nxt.anon_vma is not None \
            and prev.anon_vma is not nxt.anon_vma:  # can_vma_merge_right(): prev and next must agree too
        right = False
    merged = [v for v, ok in ((prev, left), (vma, True), (nxt, right)) if ok]
    if len(merged) == 1:
        return vma
    survivor = merged[0]
    donor = next((v for v in merged if v.anon_vma is not None), None)  # dup_anon_vma()
    survivor.vm_end = merged[-1].vm_end
    if donor is not None:
        survivor.anon_vma, survivor.anon_vma_chain = donor.anon_vma, donor.anon_vma_chain
    for v in merged[1:]:
        mm.remove_vma(v)
    return survivor


# --- mmap / munmap ------------------------------------------------------------------------------

def do_mmap(k: Kernel, mm: MM, length: int, prot_flags: int, *, obj: AddressSpace | None = None,
            offset: int = 0, shared: bool = False, addr: int = 0, fixed: bool = False) -> int:
    """Models do_mmap() + mmap_region().  Returns the start address of the new mapping."""
    if length <= 0:
        raise MmError("EINVAL", "mmap length must be more than 0")
    if offset % PAGE_SIZE:
        raise MmError("EINVAL", f"file offset {offset:#x} is not page-aligned")
    if obj is not None and obj.is_hugetlb:
        hp = k.geom.hpage_size
        length = -(-length // hp) * hp
        if offset % hp:
            raise MmError("EINVAL", f"hugetlb file offset {offset:#x} is not a multiple of 2 MiB")
    if obj is not None and obj.is_mshare:
        check_mshare_mmap(mm, obj, length, offset, shared, addr if fixed else 0)
    length = -(-length // PAGE_SIZE) * PAGE_SIZE
    if length > mm.task_size:
        raise MmError("ENOMEM", f"length {length:#x} is larger than the address space")
    pgoff = offset >> PAGE_SHIFT
    if shared and obj is None:
        obj = AddressSpace(id=k.new_object_id(), name="[shmem]", kind=SHMEM, size=length,
                           page_size=PAGE_SIZE, anonymous=True)
        k.objects[obj.id] = obj
        pgoff = 0
    if fixed:
        if addr % PAGE_SIZE or addr < MMAP_MIN_ADDR or addr + length > mm.task_size:
            raise MmError("EINVAL", f"MAP_FIXED address {addr:#x} is not a valid page-aligned user address")
        if obj is not None and obj.is_hugetlb and addr % k.geom.hpage_size:
            raise MmError("EINVAL", f"hugetlb MAP_FIXED address {addr:#x} is not 2 MiB-aligned")
        do_munmap(k, mm, addr, length)
    else:
        addr = get_unmapped_area(k, mm, addr, length, pgoff, obj, shared)
    vm_flags = prot_flags | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC
    if shared:
        vm_flags |= VM_SHARED | VM_MAYSHARE
    if obj is not None and obj.is_hugetlb:
        vm_flags |= VM_HUGETLB | VM_DONTEXPAND
    elif not shared and vm_flags & VM_WRITE:
        vm_flags |= VM_ACCOUNT  # accountable_mapping(): private writable memory is committed
    if obj is None:
        pgoff = addr >> PAGE_SHIFT
    vma = VMA(mm=mm, vm_start=addr, vm_end=addr + length, vm_flags=vm_flags, vm_pgoff=pgoff, obj=obj)
    mm.insert_vma(vma)
    vma_merge(k, mm, vma)
    return addr


def do_munmap(k: Kernel, mm: MM, start: int, length: int) -> None:
    """Models do_vmi_munmap(): split at the ends, zap, free page tables, remove the VMAs."""
    if start % PAGE_SIZE:
        raise MmError("EINVAL", f"munmap address {start:#x} is not page-aligned")
    end = start + -(-length // PAGE_SIZE) * PAGE_SIZE
    victims = detach_range(k, mm, start, end)
    if not victims:
        return
    unmap_region(k, mm, victims)


def detach_range(k: Kernel, mm: MM, start: int, end: int) -> list[VMA]:
    """Split the VMAs at ``start`` and ``end`` and take out those inside (vms_gather_munmap_vmas)."""
    for vma in mm.vmas_between(start, end):
        if vma.is_hugetlb and (start % k.geom.hpage_size or end % k.geom.hpage_size):
            raise MmError("EINVAL", "hugetlb mappings can only be split at 2 MiB boundaries")
    inside = mm.vmas_between(start, end)
    if not inside:
        return []
    if inside[0].vm_start < start:
        inside[0] = split_vma(k, mm, inside[0], start)
    if inside[-1].vm_end > end:
        split_vma(k, mm, inside[-1], end)
    return mm.vmas_between(start, end)


def unmap_region(k: Kernel, mm: MM, victims: list[VMA]) -> None:
    """Models unmap_region(): zap the range, free its page tables, then forget the VMAs."""
    start, end = victims[0].vm_start, victims[-1].vm_end
    for vma in victims:
        unshare_range(k, mm, vma.vm_start, vma.vm_end, unmap=True)
        zap_page_range(k, mm, vma.vm_start, vma.vm_end)
    for vma in victims:
        mm.remove_vma(vma)
        release_object(k, vma.obj)
    k.events.add("vmas_freed", len(victims))
    prev, nxt = mm.prev_next(start, end)
    floor = prev.vm_end if prev is not None else 0
    ceiling = nxt.vm_start if nxt is not None else 0
    free_pgtables(k, mm, [(v.vm_start, v.vm_end) for v in victims], floor, ceiling)


def release_object(k: Kernel, obj: AddressSpace | None) -> None:
    """Shared anonymous memory disappears with its last mapping (its file is never named)."""
    if obj is None or not obj.anonymous or obj.i_mmap:
        return
    pfns = obj.cached_frames()
    obj.resize(0)
    k.frames.free(pfns)
    k.events.add("pages_freed", len(pfns))
    del k.objects[obj.id]

