"""Holding live processes still while a test reads them: SIGSTOP, and waiting until it has taken effect."""

import contextlib
import os
import signal
import time


def wait_stopped(pids: list[int]) -> None:
    """Until every one of ``pids`` is in state T (stopped) or gone: SIGSTOP is delivered asynchronously."""
    deadline = time.monotonic() + 60
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rpartition(")")[2].split()[0] in "TtZX":
                        break
            except OSError:
                break
            time.sleep(0.01)
        else:
            raise AssertionError(f"process {pid} did not stop within a minute of SIGSTOP")


@contextlib.contextmanager
def stopped(pids: list[int]):
    """``pids`` stopped for the block, and continued on the way out whatever happens."""
    held: list[int] = []
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                held.append(pid)
        wait_stopped(held)
        yield
    finally:
        for pid in reversed(held):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
