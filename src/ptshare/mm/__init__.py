"""The substrate: a model of the Linux mm page-table layer.  Private; use :class:`ptshare.System`.

One file per kernel concept, named after the kernel file it models:

=============  ==============================================================
frames.py      the frame table (``struct page``) and the page allocator
pagecache.py   backing objects: page cache and ``i_mmap``
pgtable.py     storage of page-table contents and of shared tables
pagewalk.py    walking the upper levels; table allocation counters
vma.py         ``vm_area_struct`` and vm_flags
mm_struct.py   ``mm_struct`` and ``task_struct``
mmap.py        placement, mmap, munmap, VMA split and merge
memory.py      the fault path
unmap.py       zapping and freeing page tables
fork.py        fork, exec, exit
mprotect.py    mprotect, madvise(DONTNEED)
mremap.py      mremap
truncate.py    truncate
ptshare.py     shared page tables (hugetlb PMD sharing, McCracken)
unshare.py     letting go of shared tables before a range changes
translate.py   address translation (what the MMU finds)
rss.py         resident set size from the page tables
kernel.py      the state all of the above act on
=============  ==============================================================
"""
