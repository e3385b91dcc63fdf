"""The whatif report as text tables."""

from __future__ import annotations

import statistics

from ..cli.render import table
from ..units import format_ns
from .whatif import BASELINE

MAX_ROWS = 20


def whatif_table(doc: dict) -> str:
    snap = doc["snapshot"]
    out = [f"ptshare whatif: {snap['file']} -- {snap['processes']} processes on {snap['host']} "
           f"(Linux {snap['kernel']}), taken {snap['created']}"]
    out += [f"PARTIAL SNAPSHOT: {p}" for p in snap["problems"]]
    out += ["", _policy_table(doc), "", *_summary(doc), "", _process_table(doc)]
    out += [f"note: {w}" for w in [*snap["warnings"], *doc["warnings"]][:MAX_ROWS]]
    return "\n".join(out)


def _policy_table(doc: dict) -> str:
    system = doc["system"]
    rows = []
    for name in doc["policies"]:
        s = system["policies"][name]
        procs = [p["policies"][name] for p in doc["processes"].values()]
        saved = system["savings"].get(name, {}).get("pagetables_kb", 0)
        warm = [p["warmup"]["faults"] for p in procs]
        rows.append([name, s["pagetables_kb"], saved, s["vmpte_total_kb"], s["pt_shared_total_kb"],
                     s["fork_ptes_copied_total"], format_ns(s["fork_est_ns_total"]),
                     int(statistics.median(warm)) if warm else 0])
    head = ["policy", "PageTables kB", "saved kB", "VmPTE sum kB", "shared kB", "fork: PTEs copied",
            "fork: est. time", "warm-up faults"]
    background = [system["policies"][name].get("fork_est_ns_background_total", 0) for name in doc["policies"]]
    if any(background):  # a policy moved fork's work off the caller's path (async-fork)
        for row, ns in zip(rows, background, strict=True):
            row.insert(7, format_ns(ns))
        head.insert(7, "fork: background")
    profile = doc["cost_profile"]
    return ("Page tables of the snapshot's processes (PageTables includes their PGDs); fork and warm-up are\n"
            "per process, summed (fork) or the median (warm-up: faults of a new process reading the same\n"
            f"page-cache pages); times from the cost profile {profile['name']!r}, measured on {profile['machine']}\n"
            + table(head, rows, "l" + "r" * (len(head) - 1)))


def _summary(doc: dict) -> list[str]:
    system = doc["system"]
    check = system["linux_check"]
    lines = [f"measured by the kernel: VmPTE of these processes {system['measured_vmpte_total_kb']:,} kB; "
             f"PageTables of the whole machine {system['measured_pagetables_kb'] or 0:,} kB",
             f"linux reproduces VmPTE exactly for {check['exact']} of {check['processes']} processes, within "
             f"slack for {check['within_slack']} (kernel minus simulated: {check['slack_kb']:+,} kB in all; "
             f"tables with no present page), outside for {check['outside']}"]
    savings = system["savings"]
    for name in ("shared-pt", "shared-pt-2005"):
        if name in savings:
            s = savings[name]
            lines.append(f"{name} would save {s['pagetables_kb']:,} kB of page tables ({s['percent']}%)")
    if "hugetlb-pmd-sharing" in savings:
        s = savings["hugetlb-pmd-sharing"]
        lines.append(f"hugetlb PMD sharing saves {s['pagetables_kb']:,} kB ({s['percent']}% of what "
                     "linux would use without it)")
    else:
        lines.append("hugetlb PMD sharing saves nothing here: no hugetlb mappings")
    return lines


def _process_table(doc: dict) -> str:
    """One row per process; a policy gets a VmPTE column only where it differs from linux somewhere."""
    procs = sorted(doc["processes"].items(), key=lambda kv: -kv[1]["measured_vmpte_kb"])
    others = [n for n in doc["policies"][1:]
              if any(p["policies"][n]["vmpte_kb"] != p["policies"][BASELINE]["vmpte_kb"] for _, p in procs)]
    warm = [BASELINE, *(n for n in ("shared-pt",) if n in doc["policies"])]
    rows = []
    for pid, p in procs[:MAX_ROWS]:
        c = p["linux_check"]
        base = p["policies"][BASELINE]
        rows.append([pid, p["comm"], c["measured_vmpte_kb"], c["simulated_vmpte_kb"], c["slack_kb"], c["verdict"],
                     *(p["policies"][n]["vmpte_kb"] for n in others),
                     base["fork"]["ptes_copied"], format_ns(base["fork"]["est_ns"]),
                     *(p["policies"][n]["warmup"]["faults"] for n in warm)])
    head = ["pid", "comm", "VmPTE kB", BASELINE, "slack", "check", *others, "fork PTEs", "fork est.",
            *(f"warm-up ({n})" for n in warm)]
    title = (f"Processes (VmPTE kB: measured by the kernel, then simulated; fork under {BASELINE}; "
             "warm-up: faults of a new process)")
    more = f"\n... and {len(procs) - MAX_ROWS} more (--format json has them all)" if len(procs) > MAX_ROWS else ""
    return title + "\n" + table(head, rows, "llrrrl" + "r" * (len(others) + 2 + len(warm))) + more
