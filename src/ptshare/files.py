"""Input files: what may be read as a document."""

from __future__ import annotations

import stat
from pathlib import Path


def readable_file(path: Path) -> bool:
    """Whether ``path`` is something to read a document from: a regular file or a pipe, not a device
    such as /dev/zero that never ends.  Raises FileNotFoundError (and other OSErrors) as ``stat``."""
    mode = path.stat().st_mode
    return stat.S_ISREG(mode) or stat.S_ISFIFO(mode)
