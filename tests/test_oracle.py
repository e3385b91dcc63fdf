"""The oracle: random sequences of every operation, on every policy and on the reference model.

The policies include those of tests/sharing_policies.py, which exercise sharing rules no shipped
policy uses yet.

Every value read must be the same under every policy and equal to the reference model's; the
invariant checker runs after every operation (``check=True``); at the end every process exits
and nothing may be left.  ``make test PYTEST_ARGS=--long`` runs many more sequences.
"""

from dataclasses import dataclass

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ptshare import POLICIES, SimulationError, System
from ptshare.mm.access import Accesses
from ptshare.oracle.invariants import check_empty
from ptshare.oracle.reference import Reference
from sharing_policies import ORACLE

MiB = 1 << 20
PAGE = 4096


@dataclass(frozen=True)
class Refused:
    """A call every policy refused, with the kernel's reason."""

    reason: str


OBJECTS = {"shm": ("shmem", 8 * MiB), "file": ("file", 6 * MiB), "huge": ("hugetlb", 8 * MiB),
           "region": ("mshare", 8 * MiB)}
REGION = 512 << 30  # the region an mshare object of 8 MiB is placed in, mapped whole
WINDOW = 10 * MiB  # what is touched and changed of a mapped region: its object and 2 MiB past its end


def window(obj, addr, size):
    """What the rules touch and change of a new mapping: all of it, or a window of a region."""
    return (addr, WINDOW if obj == "region" else size, obj == "huge")


class Oracle(RuleBasedStateMachine):
    thp = "madvise"

    def __init__(self):
        super().__init__()
        self.systems = {p: System(p, check=True, aslr_bits=8, seed=3, thp=self.thp) for p in POLICIES}
        self.systems.update({cls.name: System(cls(), check=True, aslr_bits=8, seed=3, thp=self.thp) for cls in ORACLE})
        self.ref = Reference()
        self.procs: list[str] = []
        self.maps: dict[str, dict[str, tuple[int, int, bool]]] = {}  # proc -> handle -> (addr, size, hugetlb)
        self.objmaps: dict[str, dict[str, tuple]] = {}  # proc -> handle -> how an object was mapped
        self.n = 0

    def each(self, method, *args, **kwargs):
        """Apply one call to every policy; they must agree on its result, or all refuse it alike."""
        results = {}
        for p, s in self.systems.items():
            try:
                results[p] = getattr(s, method)(*args, **kwargs)
            except SimulationError as exc:
                results[p] = Refused(str(exc))
            except Exception as exc:
                exc.add_note(f"under policy {p!r}")
                raise
        first = next(iter(results.values()))
        for p, r in results.items():
            if isinstance(first, int | type(None) | Refused):
                assert r == first, f"{method}: {p} gave {r!r}, {next(iter(results))} {first!r}"
        return first

    @initialize()
    def setup(self):
        for name, (kind, size) in OBJECTS.items():
            self.each("create_object", name, kind, size)
            obj_id = self.systems["linux"].object(name).id
            self.ref.create_object(name, obj_id, kind, size)
        self.spawn()

    def alive(self):
        return [p for p in self.procs if self.ref.procs[p].alive]

    @precondition(lambda self: len(self.alive()) < 4)
    @rule()
    def spawn(self):
        name = f"p{self.n}"
        self.n += 1
        self.each("spawn", name)
        self.ref.spawn(name)
        self.procs.append(name)
        self.maps[name] = {}

    @precondition(lambda self: 0 < len(self.alive()) < 5)
    @rule(data=st.data())
    def fork(self, data):
        parent = data.draw(st.sampled_from(self.alive()))
        child = f"p{self.n}"
        self.n += 1
        self.each("fork", parent, child)
        self.ref.fork(parent, child)
        self.procs.append(child)
        self.maps[child] = dict(self.maps[parent])

    @precondition(lambda self: len(self.alive()) > 1)
    @rule(data=st.data(), exec_=st.booleans())
    def exit_or_exec(self, data, exec_):
        name = data.draw(st.sampled_from(self.alive()))
        if exec_:
            self.each("exec", name)
            self.ref.exec(name)
        else:
            self.each("exit", name)
            self.ref.exit(name)
        self.maps[name] = {}

    @precondition(lambda self: self.alive())
    @rule(data=st.data(), kind=st.sampled_from(["anon", "anon-shared", "shm", "file", "huge", "region"]),
          pages=st.integers(1, 1100), shared=st.booleans(), prot=st.sampled_from(["rw", "rw", "r"]))
    def mmap(self, data, kind, pages, shared, prot):
        name = data.draw(st.sampled_from(self.alive()))
        obj = None if kind.startswith("anon") else kind
        shared = True if kind == "anon-shared" else (shared and obj is not None)
        if obj == "huge":
            size = (pages % 4 + 1) * 2 * MiB
            offset = 0
        elif obj == "region":  # mapped whole, shared (a private mapping is refused: tried now and then)
            size, offset, shared = REGION, 0, shared or pages % 8 != 0
        else:
            size = pages * PAGE
            limit = OBJECTS[obj][1] // PAGE - pages if obj else 0
            offset = data.draw(st.integers(0, max(limit, 0))) * PAGE if obj else 0
        align = data.draw(st.sampled_from([None, None, "2MiB"]))
        addr = self.each("mmap", name, size, object=obj, offset=offset, shared=shared, prot=prot, align=align)
        if isinstance(addr, Refused):
            return
        self.ref.mmap(name, addr, size, obj=obj, offset=offset, shared=shared, prot=prot)
        self.maps[name][f"m{self.n}"] = window(obj, addr, size)
        if obj is not None:
            self.objmaps.setdefault(name, {})[f"m{self.n}"] = (obj, offset, shared, prot, addr, size)
        self.n += 1

    @precondition(lambda self: len(self.alive()) > 1 and any(
        isinstance(h, tuple) for p in self.alive() for h in self.objmaps.get(p, {}).values()))
    @rule(data=st.data())
    def attach_same_address(self, data):
        """Map an object where another process maps it: unrelated processes may then share tables."""
        owner = data.draw(st.sampled_from([p for p in self.alive() if self.objmaps.get(p)]))
        handle = data.draw(st.sampled_from(sorted(self.objmaps[owner])))
        obj, offset, shared, prot, addr, size = self.objmaps[owner][handle]
        name = data.draw(st.sampled_from([p for p in self.alive() if p != owner]))
        got = self.each("mmap", name, size, object=obj, offset=offset, shared=shared, prot=prot, addr=addr,
                        fixed=True)
        if isinstance(got, Refused):
            return
        self.ref.mmap(name, addr, size, obj=obj, offset=offset, shared=shared, prot=prot)
        self.maps[name][f"m{self.n}"] = window(obj, addr, size)
        self.objmaps.setdefault(name, {})[f"m{self.n}"] = (obj, offset, shared, prot, addr, size)
        self.n += 1

    def pick(self, data, whole_pages=False):
        name = data.draw(st.sampled_from([p for p in self.alive() if self.maps[p]]))
        handle = data.draw(st.sampled_from(sorted(self.maps[name])))
        addr, size, huge = self.maps[name][handle]
        unit = 2 * MiB if huge else PAGE
        units = size // unit
        first = data.draw(st.integers(0, units - 1))
        count = data.draw(st.integers(1, units - first))
        return name, handle, addr + first * unit, count * unit, huge

    def has_maps(self):
        return any(self.maps[p] for p in self.alive())

    @precondition(has_maps)
    @rule(data=st.data(), write=st.booleans())
    def touch_all(self, data, write):
        """The commonest access: a whole mapping, in order."""
        name = data.draw(st.sampled_from([p for p in self.alive() if self.maps[p]]))
        addr, size, _huge = self.maps[name][data.draw(st.sampled_from(sorted(self.maps[name])))]
        self.check_access(name, Accesses.progression(addr, addr + size), write)

    @precondition(has_maps)
    @rule(data=st.data(), write=st.booleans(), random=st.booleans(), beyond=st.integers(0, 3))
    def touch(self, data, write, random, beyond):
        name, _h, start, length, _huge = self.pick(data)
        length += beyond * PAGE  # sometimes run past the mapping: a modelled SIGSEGV or SIGBUS
        if random:
            pages = length // PAGE
            idx = np.array(data.draw(st.lists(st.integers(0, pages - 1), min_size=1, max_size=40)))
            acc = Accesses.explicit(start + idx * PAGE)
        else:
            acc = Accesses.progression(start, start + length)
        self.check_access(name, acc, write)

    def check_access(self, name, acc, write):
        signals = self.each("access", name, acc, write=write)
        values, ref_signal = self.ref.access(name, acc.materialize(), write)
        for policy, s in self.systems.items():
            _who, _addrs, got = s.read_values()[-1]
            assert np.array_equal(got, values), f"{policy}: read {got[:8]} but the reference reads {values[:8]}"
        if ref_signal is None:
            assert signals is None
        else:
            assert signals is not None and (signals.signal, signals.addr) == ref_signal
            self.maps[name] = {}

    @precondition(has_maps)
    @rule(data=st.data(), op=st.sampled_from(["munmap", "mprotect", "madvise"]), prot=st.sampled_from(["r", "rw", ""]))
    def change(self, data, op, prot):
        name, _handle, start, length, _huge = self.pick(data)
        if op == "munmap":
            if not isinstance(self.each("munmap", name, start, length), Refused):
                self.ref.munmap(name, start, length)
        elif op == "mprotect":
            if not isinstance(self.each("mprotect", name, start, length, prot), Refused):
                self.ref.mprotect(name, start, length, prot)
        elif not isinstance(self.each("madvise_dontneed", name, start, length), Refused):
            self.ref.madvise_dontneed(name, start, length)

    @precondition(lambda self: any(h[0] == "region" for p in self.alive() for h in self.objmaps.get(p, {}).values()))
    @rule(data=st.data())
    def unmap_region(self, data):
        """munmap of a whole mshare region (a part of one is refused: :meth:`change` tries that)."""
        name = data.draw(st.sampled_from([p for p in self.alive()
                                          if any(h[0] == "region" for h in self.objmaps.get(p, {}).values())]))
        handles = sorted(h for h, m in self.objmaps[name].items() if m[0] == "region")
        addr = self.objmaps[name][data.draw(st.sampled_from(handles))][4]
        if not isinstance(self.each("munmap", name, addr, REGION), Refused):
            self.ref.munmap(name, addr, REGION)

    @precondition(has_maps)
    @rule(data=st.data(), huge=st.booleans())
    def thp_advice(self, data, huge):
        """MADV_HUGEPAGE or MADV_NOHUGEPAGE on part of a mapping: contents never change."""
        name, _handle, start, length, _huge = self.pick(data)
        self.each("madvise_thp", name, start, length, "hugepage" if huge else "nohugepage")

    @precondition(has_maps)
    @rule(data=st.data(), grow=st.integers(-2, 3))
    def mremap(self, data, grow):
        name = data.draw(st.sampled_from([p for p in self.alive() if self.maps[p]]))
        handle = data.draw(st.sampled_from(sorted(self.maps[name])))
        addr, size, huge = self.maps[name][handle]
        unit = 2 * MiB if huge else PAGE
        new_size = max(unit, size + grow * unit)
        proc = self.systems["linux"].task(name)
        vma = proc.mm.vma_lookup(addr)
        if vma is None or vma.vm_end < addr + size or vma.vm_start > addr:
            return  # the handle's range is no longer one mapping
        new = self.each("mremap", name, addr, size, new_size)
        if not isinstance(new, Refused):
            self.ref.mremap(name, addr, size, new_size, new)
            self.maps[name][handle] = (new, new_size, huge)

    @rule(obj=st.sampled_from(sorted(OBJECTS)), fraction=st.integers(1, 4))
    def truncate(self, obj, fraction):
        kind, size = OBJECTS[obj]
        unit = 2 * MiB if kind == "hugetlb" else PAGE
        new = size * fraction // 4 // unit * unit
        if not isinstance(self.each("truncate", obj, new), Refused):
            self.ref.truncate(obj, new)

    @invariant()
    def same_counts_where_policies_agree(self):
        # Every policy must have the same mappings; page-table costs differ by design.
        names = [t.name for t in self.systems["linux"].k.tasks if t.alive]
        for s in self.systems.values():
            assert [t.name for t in s.k.tasks if t.alive] == names

    def teardown(self):
        for s in self.systems.values():
            s.exit_all()
            s.drop_objects()
            check_empty(s)


TestOracle = Oracle.TestCase


class OracleThpAlways(Oracle):
    """The same, with transparent huge pages for all private anonymous memory: huge PMDs are made,
    copied, split and zapped by every operation."""

    thp = "always"


TestOracleThpAlways = OracleThpAlways.TestCase
TestOracleThpAlways.settings = settings(settings(), max_examples=max(settings().max_examples // 4, 50))
