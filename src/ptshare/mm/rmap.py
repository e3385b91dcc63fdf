"""anon_vmas and their chains: models the parts of mm/rmap.c that decide which ``anon_vma`` a VMA
gets (``anon_vma_prepare``, ``find_mergeable_anon_vma``, ``anon_vma_fork``).

The simulator finds a page's mappings through the page tables, not through the anon_vma tree, so
an anon_vma here is only an identity and a chain only a length -- which is all the VMA merge rules
(mm/vma.c) and fork's ``vma_needs_copy`` look at.
"""

from __future__ import annotations

from ..arch import PAGE_SHIFT
from .vma import VM_ACCESS_FLAGS, VMA, AnonVma


def anon_vma_prepare(vma: VMA) -> None:
    """Models anon_vma_prepare(): the first anonymous page of a VMA gives it an anon_vma -- its
    neighbour's, when ``find_mergeable_anon_vma`` finds one it may reuse, so that the two can
    merge later (after an mprotect that makes their flags equal, say); otherwise a new one."""
    if vma.anon_vma is not None:
        return
    anon_vma = find_mergeable_anon_vma(vma) or AnonVma()
    vma.anon_vma = anon_vma
    vma.anon_vma_chain = (anon_vma,)


def find_mergeable_anon_vma(vma: VMA) -> AnonVma | None:
    """Models find_mergeable_anon_vma(): the next VMA's anon_vma, else the previous one's, if that
    VMA is adjacent and compatible (``anon_vma_compatible``) and not a fork child."""
    vmas = vma.mm.vmas
    i = vma.mm.index_of(vma)
    if i + 1 < len(vmas):
        nxt = vmas[i + 1]
        found = _reusable_anon_vma(nxt, vma, nxt)
        if found is not None:
            return found
    if i > 0:
        prev = vmas[i - 1]
        return _reusable_anon_vma(prev, prev, vma)
    return None


def _reusable_anon_vma(old: VMA, a: VMA, b: VMA) -> AnonVma | None:
    """Models reusable_anon_vma(): ``old``'s anon_vma if ``a`` and ``b`` could share one and
    ``old``'s chain is singular."""
    if anon_vma_compatible(a, b) and old.anon_vma is not None and len(old.anon_vma_chain) == 1:
        return old.anon_vma
    return None


def anon_vma_compatible(a: VMA, b: VMA) -> bool:
    """Models anon_vma_compatible(): ``a`` ends where ``b`` starts, maps the same object at
    consecutive offsets, and their flags differ at most in the access bits (read, write, exec)."""
    return (a.vm_end == b.vm_start and a.obj is b.obj
            and not (a.vm_flags ^ b.vm_flags) & ~VM_ACCESS_FLAGS
            and b.vm_pgoff == a.vm_pgoff + ((b.vm_start - a.vm_start) >> PAGE_SHIFT))


def anon_vma_fork(child: VMA, parent: VMA) -> None:
    """Models anon_vma_fork(): a child's copy of a VMA with an anon_vma links to every anon_vma of
    the parent's chain and gets one of its own -- so its chain has more than one entry."""
    if parent.anon_vma is None:
        return
    own = AnonVma()
    child.anon_vma = own
    child.anon_vma_chain = (*parent.anon_vma_chain, own)
