"""Policies that exist only to test the sharing substrate: each sets one hook the shipped policies
leave alone, so the machinery behind it is exercised (and checked by the oracle) on its own."""

from ptshare.arch import PAGE_SHIFT
from ptshare.mm.vma import VM_HUGETLB, VM_SHARED, VMA
from ptshare.policies.base import Policy, ShareKey
from ptshare.policies.sharedpt import SharedPT


class CowTables(Policy):
    """Linux, but fork shares the PTE tables of private memory copy-on-write instead of copying
    them (``cow_pte_tables``): the first change in a 2 MiB span copies that table."""

    name = "test-cow-tables"

    def cow_pte_tables(self, vma: VMA) -> bool:
        return vma.is_cow_mapping


class SharedPTCopy(SharedPT):
    """McCracken's 2006 sharing with tables unshared by copying rather than by dropping."""

    name = "test-shared-pt-copy"
    unshare_mode = "copy"


class SharedPUD(Policy):
    """PUD tables of shared file mappings shared, as McCracken shared PTE tables: a process mapping
    a whole 512 GiB span of the same object at the same address finds another's PUD table."""

    name = "test-shared-pud"

    def pud_share_key(self, vma: VMA) -> ShareKey | None:
        if vma.obj is None or not vma.vm_flags & VM_SHARED or vma.vm_flags & VM_HUGETLB:
            return None
        return ShareKey(vma.obj.id, vma.vm_start - (vma.vm_pgoff << PAGE_SHIFT), (vma.vm_start, vma.vm_end))

    def share_at_fork(self, vma: VMA) -> bool:
        return self.pud_share_key(vma) is not None


ORACLE = (CowTables, SharedPTCopy)
