"""A real PostgreSQL postmaster's fork of a backend, timed, against what ``ptshare whatif`` predicts.

The postmaster forks one backend per connection.  Its CPU time (``/proc/PID/schedstat``: the
scheduler's count of the nanoseconds it ran) is read around N connections made one after another
by ``pgbench -C`` on an idle server (each connection runs ``SELECT 1`` and closes): the CPU time per
connection is the postmaster's fork of a backend plus the little else it does for a connection
(accept it, reap the backend).  ``ptshare whatif`` on a snapshot of the idle postmaster predicts
the fork.  The ratio is printed; the check is a wide band (0.5-2x), so that a busy machine does
not fail it; ``ptshare bench --real`` records exact ratios for a C program.

The cluster (the ``cluster`` fixture) is the one ``tests/test_postgres.py`` sets up.
"""

import sys

from forkcheck import whatif_fork
from test_postgres import cluster, pytestmark  # noqa: F401  (the fixture, and its skip conditions)

CONNECTIONS = 200


def cpu_ns(pid: int) -> int:
    """The nanoseconds process ``pid``'s main thread has run (the first field of /proc/PID/schedstat)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def test_postmaster_fork_against_whatif(cluster, tmp_path, capsys):  # noqa: F811
    pm = cluster.postmaster
    script = cluster.root / "select1.sql"
    script.write_text("SELECT 1;\n")
    connect = ["-h", str(cluster.root), "-p", str(cluster.port), "-n", "-C", "-c", "1", "-f", str(script)]
    cluster.run("pgbench", *connect, "-t", "20", "postgres")  # warm-up: the postmaster's own pages settle
    doc, fork = whatif_fork(pm, tmp_path, capsys)
    assert doc["cost_profile"]["name"] and doc["cost_profile"]["machine"]

    rounds = []
    for _ in range(3):
        before = cpu_ns(pm)
        cluster.run("pgbench", *connect, "-t", str(CONNECTIONS), "postgres", timeout=300)
        rounds.append((cpu_ns(pm) - before) / CONNECTIONS)
    measured = sorted(rounds)[1]
    ratio = fork["est_ns"] / measured
    print(f"\nPostgreSQL postmaster: fork copies {fork['ptes_copied']:,} PTEs; whatif predicts "
          f"{fork['est_ns'] / 1e3:.0f} us, the postmaster runs {measured / 1e3:.0f} us per connection "
          f"(median of {len(rounds)} rounds of {CONNECTIONS}): ratio {ratio:.2f}", file=sys.stderr)
    assert 0.5 <= ratio <= 2.0, f"predicted / measured = {ratio:.2f}"
