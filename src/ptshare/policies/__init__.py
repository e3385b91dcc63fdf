"""Page-table designs as policies: see :mod:`ptshare.policies.base` for the hooks."""

from __future__ import annotations

from ..errors import UsageError
from .asyncfork import AsyncFork
from .base import Policy
from .classic import Eager, Lazy, Linux, LinuxNoPmdShare
from .mshare import Mshare
from .odf import CowPT, OnDemandFork
from .sharedpt import SharedPT, SharedPT2005

POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (Eager, Lazy, Linux, SharedPT, SharedPT2005, LinuxNoPmdShare, OnDemandFork,
                              CowPT, AsyncFork, Mshare)}


def get_policy(name: str) -> Policy:
    """The policy called ``name``.  Raises UsageError listing the known ones."""
    cls = POLICIES.get(name)
    if cls is None:
        raise UsageError(f"unknown policy {name!r}; known policies: {', '.join(POLICIES)}")
    return cls()


__all__ = ["POLICIES", "Policy", "get_policy"]
