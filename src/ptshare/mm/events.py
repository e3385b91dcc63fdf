"""Event counters: what the modelled kernel did, counted the way ``/proc/vmstat`` counts.

Each name is documented here because the cost model (``ptshare.cost``) charges nanoseconds per
event and reports quote them.
"""

from __future__ import annotations

import numpy as np

EVENTS: dict[str, str] = {
    # faults (each is one entry of min_flt)
    "fault": "page faults handled (min_flt)",
    "fault_anon": "do_anonymous_page write: a new zeroed anonymous page",
    "fault_zero": "do_anonymous_page read: the zero page mapped",
    "fault_file": "do_read_fault: a file or shmem page mapped for reading",
    "fault_around_ptes": "extra PTEs mapped by fault-around beyond the faulting one",
    "fault_shared_write": "do_shared_fault: a file or shmem page mapped writable",
    "fault_cow": "do_cow_fault: a private copy of a file page on first write",
    "fault_wp_copy": "do_wp_page: a copy-on-write copy",
    "fault_wp_reuse": "do_wp_page: an exclusive page made writable again",
    "fault_wp_shared": "do_wp_page on a shared mapping: page_mkwrite",
    "fault_hugetlb": "hugetlb_fault: a 2 MiB hugetlb page mapped",
    "fault_spurious": "faults that found the entry already present (after attaching a shared table)",
    "page_alloc": "4 KiB data frames allocated (anonymous, page cache, copies)",
    "hpage_alloc": "2 MiB hugetlb folios allocated",
    "page_zeroed": "4 KiB frames cleared or copied on allocation",
    "accesses": "memory accesses made by touches, faulting or not: what each costs beyond a fault (a TLB miss and "
                "a page walk, a cache miss)",
    # fork
    "fork": "fork() calls",
    "ptes_copied": "PTEs copied by copy_pte_range at fork, or when a shared table is copied",
    "ptes_copied_scattered": "of ptes_copied, those whose page's frame is not the frame after the previous PTE's "
                             "(its struct page is not the line after the last one: a cache miss; see docs/model.md)",
    "huge_pmds_copied": "huge PMD entries (hugetlb, THP) copied at fork",
    "thp_fault_alloc": "transparent huge pages allocated by a fault (do_huge_pmd_anonymous_page, do_huge_zero_wp_pmd)",
    "thp_zero_page": "huge zero page mapped by a read fault",
    "thp_wp_reuse": "write faults that reused a write-protected transparent huge page whole",
    "thp_deposit": "PTE tables deposited with a huge PMD (pgtable_trans_huge_deposit)",
    "thp_split_pmd": "huge PMDs split into PTE tables (__split_huge_pmd)",
    "thp_zap_pmd": "huge PMDs zapped with their deposited tables (zap_huge_pmd)",
    "thp_move_pmd": "huge PMDs moved whole by mremap (move_huge_pmd)",
    "pte_tables_copied": "PTE tables allocated for the child and filled by copy_pte_range, or copied from a "
                         "shared table by one of its users",
    "vmas_copied": "VMAs duplicated by dup_mmap",
    "vmas_skipped": "VMAs whose page tables fork did not copy (lazy copy)",
    # teardown
    "ptes_zapped": "present PTEs cleared by zap_pte_range (munmap, madvise, exit, truncate)",
    "ptes_zapped_rmap": "of ptes_zapped, those that mapped a page, not the zero page: its rmap and reference dropped",
    "ptes_zapped_file": "of ptes_zapped_rmap, those that mapped a page-cache page (file, shmem): marked accessed, "
                        "left in the cache",
    "ptes_zapped_scattered": "of ptes_zapped_rmap, anonymous pages whose frame is not the frame after the previous "
                             "PTE's (as ptes_copied_scattered)",
    "vmas_freed": "VMAs torn down by munmap, mremap, exit and exec (remove_vma)",
    "pages_freed": "data frames returned to the allocator",
    "exit": "exit_mmap() calls",
    "exec": "exec() calls",
    "munmap": "munmap() calls: the system call, finding and splitting the VMAs, the TLB flush and freeing batch",
    "mprotect": "mprotect() calls: the system call, finding, splitting and merging the VMAs",
    "mremap": "mremap() calls: the system call, resizing the VMA in place or copying it (copy_vma) to move it",
    "madvise": "madvise() calls: the system call, finding (and for a hint, splitting and merging) the VMAs",
    # page tables
    "pgtable_alloc": "page-table pages allocated",
    "pgtable_free": "page-table pages freed",
    "pt_shared": "page tables attached from another mm instead of allocated",
    "pt_unshared": "shared page tables dropped by one of their users",
    "pt_cow_shared": "PTE tables fork shared copy-on-write with the child instead of copying (parent's PMD entry "
                     "write-protected, child's installed, the table's share count raised)",
    "pt_copied": "shared page tables one of their users copied instead of dropping (a copy-on-write table's first "
                 "change): the share count dropped and the copy installed; the copy itself is in pte_tables_copied "
                 "and ptes_copied",
    "cow_pte_counted": "PTEs of tables fork shared copy-on-write whose pages it counted for the child at once (cow-pt: "
                       "copy_present_pte run on the shared table; the page gains a mapping, the entry is "
                       "write-protected)",
    "cow_pte_duplicated": "PTEs copied as they are from a table whose pages fork counted for every user (cow-pt's "
                          "table copy: no page reference taken then)",
    "pt_copied_background": "PTE tables an async-fork child copied from its parent off the parent's path (the copy "
                            "itself is in pte_tables_copied and ptes_copied)",
    "pt_copied_sync": "PTE tables an async-fork parent copied to its child itself, on its own path, before changing "
                      "them (proactive synchronisation; the copy itself is in pte_tables_copied and ptes_copied)",
    "tlb_flush_all": "TLB flushes on all CPUs (an operation that unshared shared tables; batched)",
    "tlb_flush_mm": "TLB flushes of one mm's CPUs (an operation that changed its entries; batched)",
    "ptes_changed": "present PTEs mprotect rewrote: change_pte_range() rewrites every present entry of the range, "
                    "whether or not its permission changes",
    "ptes_moved": "PTEs moved by mremap",
}

NAMES = tuple(EVENTS)
_INDEX = {name: i for i, name in enumerate(NAMES)}


class Events:
    """A vector of counters, one per name in :data:`EVENTS`."""

    def __init__(self) -> None:
        self.values = np.zeros(len(NAMES), dtype=np.int64)

    def add(self, name: str, n: int = 1) -> None:
        self.values[_INDEX[name]] += n

    def __getitem__(self, name: str) -> int:
        return int(self.values[_INDEX[name]])

    def snapshot(self) -> np.ndarray:
        return self.values.copy()

    def as_dict(self, since: np.ndarray | None = None) -> dict[str, int]:
        values = self.values if since is None else self.values - since
        return {name: int(v) for name, v in zip(NAMES, values, strict=True)}
