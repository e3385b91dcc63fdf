"""What the host-backend tests look for after a run: processes a run made, found by a tag in
their environment."""

import glob
import signal
import time
from pathlib import Path


def tagged(tag: str) -> list[int]:
    """Processes whose environment carries ``tag`` (the run and every worker it made)."""
    found = []
    for environ in glob.glob("/proc/[0-9]*/environ"):
        try:
            if tag.encode() in Path(environ).read_bytes():
                found.append(int(environ.split("/")[2]))
        except OSError:
            pass
    return found


def interruptible() -> None:
    """``preexec_fn`` of a child a test interrupts with SIGINT: Ctrl-C's default action, even when the
    tests themselves run where SIGINT is ignored (a background job of a non-interactive shell), which
    the child would inherit and then never see a KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_gone(tag: str, seconds: float = 60.0) -> None:
    """Wait for every process tagged ``tag`` to end; fail if one is still there (``seconds`` guards
    against a hang: on a loaded machine processes take longer to exit)."""
    deadline = time.monotonic() + seconds
    while tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tagged(tag) == [], "worker processes were left running"
