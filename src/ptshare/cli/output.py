"""Where a command's ``-o FILE`` goes: checked before any work is done, and, should writing fail
after all (a full disk), the output printed instead so that nothing computed is lost."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import UsageError


def check_output(path: str, example: str = "out.json", option: str = "-o") -> None:
    """Refuse an output path that cannot be written, before spending time computing what goes there."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{option} {path}: is a directory; give a file name such as {target / example}")
    parent = target.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UsageError(f"{option} {path}: not writable by this user")


def write_output(text: str, path: str | None) -> None:
    """Write ``text`` (with a final newline) to ``path``, or print it when there is no path.  If the
    file cannot be written, the text goes to standard output and the error names the file."""
    if not text.endswith("\n"):
        text += "\n"
    if path:
        try:
            Path(path).write_text(text)
            return
        except OSError as exc:
            sys.stdout.write(text)
            sys.stdout.flush()
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}; "
                             "the output is printed above instead") from None
    sys.stdout.write(text)
    sys.stdout.flush()
