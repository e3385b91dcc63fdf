"""Snapshots of live processes, and what each page-table design would cost them.

* :func:`select_pids`, :func:`take` -- read live processes (``/proc/PID/smaps``, ``status``,
  ``pagemap``) into a :class:`Snapshot`; :func:`save` and :func:`load` -- the snapshot file.
* :func:`whatif` -- rebuild a snapshot in the simulator under each policy; the
  ``ptshare.whatif/1`` document.

``ptshare snapshot`` and ``ptshare whatif`` (:mod:`.cli`) are the command-line faces.
"""

from .model import ObjectSnap, ProcessSnap, Snapshot, VmaSnap
from .store import SnapshotError, load, save
from .take import select_pids, take
from .whatif import whatif

__all__ = ["ObjectSnap", "ProcessSnap", "Snapshot", "SnapshotError", "VmaSnap", "load", "save", "select_pids",
           "take", "whatif"]
