"""Where runs are made: here, one after the other, or on a Dask cluster.

An executor takes the runs still to make and yields each one as it finishes; the caller
(:func:`.runner.make_runs`) stores it.  So the results database stays with the process that owns
it, and workers only compute: a worker gets a :class:`~.runner.Job` (the scenario, the policy, the
cost model, what to measure) and returns a :class:`~.runner.Made` (the metrics).

* :class:`SerialExecutor` -- in this process, as ``ptshare`` always ran; the bar moves step by step.
* :class:`DaskExecutor` -- on Dask ``distributed``: a ``LocalCluster`` of N worker processes on this
  machine (``--workers N``), or the scheduler of an existing cluster (``--cluster ADDRESS``).  Every
  run is one task.  A worker that dies mid-run is no loss: the scheduler gives its task to another
  worker (up to ``distributed.scheduler.allowed-failures`` times, then the run is reported as
  failed), and since only this process stores, a run is stored once however often it was made.

``distributed`` is an optional dependency (``pip install 'ptshare[dask]'``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from ..cli.options import whole_number
from ..errors import PtshareError, UsageError
from .progress import RunsBar

if TYPE_CHECKING:
    from .runner import Job, Made

Work = Callable[["Job", Callable[[int, int], None] | None], "Made"]

# How long to wait for a cluster to come up (start-up on a loaded machine takes a while), for a running
# scheduler to answer, and for it to have a worker.
START_TIMEOUT_S = 120
CONNECT_TIMEOUT_S = 30


class RunFailed(PtshareError):
    """A run could not be made on the cluster: the workers that took it died, too often."""


class Executor(Protocol):
    def map(self, work: Work, jobs: list[Job], bar: RunsBar) -> Iterator[tuple[Job, Made]]:
        """Call ``work`` on every job; yield (job, what it returned) as each one finishes."""
        ...


class SerialExecutor:
    """Every run in this process, in order."""

    def map(self, work: Work, jobs: list[Job], bar: RunsBar) -> Iterator[tuple[Job, Made]]:
        for index, job in enumerate(jobs):
            step = bar.run(index, job.spec.label)
            made = work(job, step)
            step(1, 1)  # finished (a host run reports no steps)
            yield job, made


class DaskExecutor:
    """Runs as tasks of a Dask ``distributed.Client``; the bar moves as their futures finish."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def map(self, work: Work, jobs: list[Job], bar: RunsBar) -> Iterator[tuple[Job, Made]]:
        from distributed import as_completed

        if not jobs:
            return
        # One task per run, named by its key (unique: make_runs never passes one run twice).
        futures = {self.client.submit(work, job, None, key=f"ptshare-run-{job.key}", pure=False, retries=0): job
                   for job in jobs}
        finished = as_completed(list(futures))
        try:
            for done, future in enumerate(finished, start=1):
                job = futures.pop(future)
                made = self._result(future, job)
                future.release()
                bar.run(done - 1, job.spec.label)(1, 1)
                yield job, made
        finally:
            for future in futures:  # an error, or Ctrl-C: nothing left running for nobody
                future.cancel()

    @staticmethod
    def _result(future: Any, job: Job) -> Made:
        from distributed import KilledWorker

        try:
            return future.result()
        except KilledWorker as exc:
            raise RunFailed(f"run {job.spec.label}: every Dask worker that took it died ({exc}); the runs that "
                            "finished are stored, and the same command again makes only the missing ones") from None


def add_options(parser: argparse.ArgumentParser) -> None:
    """``--workers N`` and ``--cluster ADDRESS``: where the runs are made."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=whole_number("--workers", 1), metavar="N",
                       help="make the runs on a Dask LocalCluster of N worker processes on this machine "
                       "(needs ptshare[dask])")
    where.add_argument("--cluster", metavar="ADDRESS",
                       help="make the runs on the workers of an existing Dask scheduler, such as "
                       "tcp://10.0.0.1:8786 (needs ptshare[dask]; every worker needs this ptshare)")


def distributed_wanted(args: argparse.Namespace) -> bool:
    return bool(args.workers or args.cluster)


@contextlib.contextmanager
def executor_for(args: argparse.Namespace) -> Iterator[Executor]:
    """The executor ``--workers``/``--cluster`` ask for (default: serial), open for the ``with`` block."""
    if not distributed_wanted(args):
        yield SerialExecutor()
        return
    option = "--workers" if args.workers else "--cluster"
    try:
        import dask
        import distributed
    except ImportError:
        raise UsageError(f"{option} runs on Dask distributed, which is not installed here: "
                         "pip install 'ptshare[dask]'") from None
    with contextlib.ExitStack() as stack:
        if args.workers:
            with dask.config.set({"distributed.nanny.pre-spawn-environ": _worker_environ()}):
                cluster = stack.enter_context(distributed.LocalCluster(
                    n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                    dashboard_address=None, silence_logs=logging.CRITICAL))  # errors reach the user as ours
            client = stack.enter_context(distributed.Client(cluster, timeout=START_TIMEOUT_S))
        else:
            client = stack.enter_context(_connect(distributed, args.cluster))
        yield DaskExecutor(client)


def _worker_environ() -> dict[str, Any]:
    """What Dask sets in a worker's environment, without ``MALLOC_TRIM_THRESHOLD_``: glibc then stops
    adapting its mmap threshold, so every large array the simulator makes is a fresh mapping faulted in
    page by page, and runs took 1.5 times as long (measured here, fork-shared-segment at 8 GiB)."""
    import dask

    environ = dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {}
    return {k: v for k, v in environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}


@contextlib.contextmanager
def _connect(distributed: Any, address: str) -> Iterator[Any]:
    try:
        client = distributed.Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"--cluster {address}: no Dask scheduler answers there ({exc})") from None
    with client:
        try:
            client.wait_for_workers(1, timeout=START_TIMEOUT_S)
        except TimeoutError:
            raise UsageError(f"--cluster {address}: the scheduler has no workers; start some with "
                             f"'dask worker {address}'") from None
        yield client
