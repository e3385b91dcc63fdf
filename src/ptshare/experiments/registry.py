"""Every experiment, in the order the demo runs them and the report shows them."""

from __future__ import annotations

from .aslr import Aslr
from .base import Experiment
from .database import Database
from .fork_exec import ForkExec
from .fork_private import ForkPrivate
from .fork_vs_segment import ForkVsSegment
from .lazy_tradeoff import LazyTradeoff
from .redis_snapshot import RedisSnapshot
from .worst_cases import WorstCases

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    ForkVsSegment(), LazyTradeoff(), ForkExec(), ForkPrivate(), RedisSnapshot(), Database(), Aslr(), WorstCases())}
