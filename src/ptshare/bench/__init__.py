"""``ptshare bench``: the benchmark suite -- the worst cases the kernel community quoted, timed.

Each case is a scenario (built in :mod:`ptshare.bench.cases`) run under some policies, each run in a
fresh interpreter so that its peak memory is its own.  Times are wall-clock medians on this machine;
they are never asserted in tests.
"""
