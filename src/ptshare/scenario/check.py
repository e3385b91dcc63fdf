"""Checks that need the whole scenario: every step names a process that exists at that point, and a
mapping handle that process holds."""

from __future__ import annotations

from ..errors import ScenarioError
from .model import Scenario

_USES_VMA = ("munmap", "mprotect", "mremap", "madvise", "touch")


def check_names(scenario: Scenario) -> None:
    """Raise ScenarioError at the first step that names an unknown process or handle."""
    alive: dict[str, set[str]] = {}  # process -> its mapping handles
    ever: set[str] = set()
    path = scenario.path
    for step in scenario.steps:
        for fields in step.expand():
            pid = fields.get("pid")
            where = step.where("pid")

            def need_alive(name: str, line: int | None = where, op: str = step.op) -> set[str]:
                if name not in alive:
                    state = "has exited" if name in ever else "does not exist yet"
                    known = ", ".join(sorted(alive)[:8]) or "none"
                    raise ScenarioError(f"{op} names process {name!r}, which {state} "
                                        f"(live processes: {known})", path, line)
                return alive[name]

            def new_name(name: str, line: int | None) -> None:
                if name in ever:
                    raise ScenarioError(f"process name {name!r} is already used; every process needs its "
                                        f"own name (use {{i}} with repeat)", path, line)
                ever.add(name)

            if step.op == "spawn":
                new_name(pid, where)
                alive[pid] = set()
            elif step.op == "fork":
                handles = need_alive(pid)
                child = fields["child"]
                new_name(child, step.where("child"))
                alive[child] = set(handles)
            elif step.op == "exec":
                need_alive(pid).clear()
            elif step.op == "exit":
                need_alive(pid)
                del alive[pid]
            elif step.op == "mmap":
                handles = need_alive(pid)
                if fields["vma"] in handles:
                    raise ScenarioError(f"process {pid!r} already has a mapping named {fields['vma']!r}; "
                                        "give each mmap its own vma name", path, step.where("vma"))
                handles.add(fields["vma"])
            elif step.op in _USES_VMA:
                handles = need_alive(pid)
                if fields["vma"] not in handles:
                    known = ", ".join(sorted(handles)) or "none"
                    raise ScenarioError(f"process {pid!r} has no mapping named {fields['vma']!r} "
                                        f"(its mappings: {known})", path, step.where("vma"))
