"""Exceptions raised by ptshare.

Every error a user can cause is a :class:`PtshareError`; the command line turns it into one line on
stderr and exit status 2.  :class:`InternalError` is different: it means the simulator broke one of
its own invariants, and it carries a dump of the state that broke (the VMA, address, entry, frame and
counts), the way the kernel's ``print_bad_pte`` does.
"""

from __future__ import annotations


class PtshareError(Exception):
    """Base class of every error caused by input: a scenario, an option, a file."""


class ScenarioError(PtshareError):
    """A scenario is malformed, or asks for something the model does not allow.

    Raised while loading a scenario (unknown op, bad size, missing field) and while running one
    (a step names a process that has exited).  ``str()`` gives ``FILE:LINE: message``.
    """

    def __init__(self, message: str, file: str | None = None, line: int | None = None):
        self.message = message
        self.file = file
        self.line = line
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = self.file or "<scenario>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        return f"{where}: {self.message}"

    def located(self, file: str | None, line: int | None) -> ScenarioError:
        """Return this error with a location filled in where it had none."""
        return ScenarioError(self.message, self.file or file, self.line if self.line is not None else line)


class UsageError(PtshareError):
    """A command-line option or argument is invalid."""


class MmError(PtshareError):
    """A system call of the modelled kernel failed, as the real one would (``EINVAL``, ``ENOMEM``...).

    ``errno`` names the error the kernel would return.
    """

    def __init__(self, errno: str, message: str):
        self.errno = errno
        super().__init__(f"{errno}: {message}")


class InternalError(Exception):
    """The simulator broke one of its own invariants.  This is a bug in ptshare, not in the input.

    ``state`` holds what the checker saw (VMA, address, entry, frame, counts) so the report
    can be acted on without a debugger.
    """

    def __init__(self, message: str, **state: object):
        self.state = state
        dump = "".join(f"\n  {key}: {value}" for key, value in state.items())
        super().__init__(f"ptshare internal error: {message}{dump}")
