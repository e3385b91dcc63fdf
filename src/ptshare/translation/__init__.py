"""Address translation performance: TLBs, paging-structure caches and caches over the page tables.

Off unless asked for (``System(translation=True)``, ``--translation``, ``[machine] translation =
true``).  :class:`Translation` is the model a :class:`ptshare.System` feeds; :mod:`.cpus` holds the
CPU tables, :mod:`.lru` the exact LRU stack-distance engine; :mod:`.caches` measures this
machine's cache hierarchy and :mod:`.hostcheck` checks the model against it, by time.
"""

from .cpus import CPUS, DEFAULT, Cpu, Latency, get_cpu
from .model import Figures, Translation

__all__ = ["CPUS", "DEFAULT", "Cpu", "Figures", "Latency", "Translation", "get_cpu"]
