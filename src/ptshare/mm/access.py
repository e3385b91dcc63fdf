"""Memory accesses: the addresses a ``touch`` reads or writes, in order.

A touch of a range is usually a regular progression (every page, or every n-th), which is kept
as (start, end, stride) so that a touch of 300 GiB never materialises 78 million addresses
unless the fault path needs them; random and zipf touches are explicit arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..arch import PAGE_SHIFT, PAGE_SIZE


@dataclass(frozen=True)
class Accesses:
    """Page-aligned addresses accessed in order: a progression, or an explicit array."""

    start: int = 0
    end: int = 0
    stride: int = PAGE_SIZE
    addrs: np.ndarray | None = None

    @classmethod
    def progression(cls, start: int, end: int, stride: int = PAGE_SIZE) -> Accesses:
        return cls(start=start, end=end, stride=stride)

    @classmethod
    def explicit(cls, addrs: np.ndarray) -> Accesses:
        return cls(addrs=np.asarray(addrs, dtype=np.int64))

    @property
    def is_progression(self) -> bool:
        return self.addrs is None

    def __len__(self) -> int:
        if self.addrs is not None:
            return len(self.addrs)
        if self.end <= self.start:
            return 0
        return (self.end - self.start + self.stride - 1) // self.stride

    def bounds(self) -> tuple[int, int]:
        """Lowest address and one past the highest page accessed."""
        if self.addrs is not None:
            if len(self.addrs) == 0:
                return 0, 0
            return int(self.addrs.min()), int(self.addrs.max()) + PAGE_SIZE
        if len(self) == 0:
            return self.start, self.start
        last = self.start + (len(self) - 1) * self.stride
        return self.start, last + PAGE_SIZE

    def materialize(self) -> np.ndarray:
        if self.addrs is not None:
            return self.addrs
        return np.arange(self.start, self.start + len(self) * self.stride, self.stride, dtype=np.int64)

    def prefix(self, n: int) -> Accesses:
        """The first ``n`` accesses."""
        if self.addrs is not None:
            return Accesses.explicit(self.addrs[:n])
        return Accesses.progression(self.start, min(self.end, self.start + n * self.stride), self.stride)

    def within(self, lo: int, hi: int) -> Accesses:
        """The accesses that fall in [lo, hi), order kept."""
        if self.addrs is not None:
            first, last = self.bounds()
            if lo <= first and last <= hi:
                return self
            keep = (self.addrs >= lo) & (self.addrs < hi)
            return Accesses.explicit(self.addrs[keep])
        if hi <= self.start or lo >= self.end:
            return Accesses.progression(lo, lo, self.stride)
        first = self.start if lo <= self.start else self.start + -(-(lo - self.start) // self.stride) * self.stride
        return Accesses.progression(first, min(hi, self.end), self.stride)

    def first_touches(self) -> Accesses:
        """The first access to each page, order kept: what a touch's faults depend on.

        A later access to a page the touch already reached finds it as the first access left it
        -- present after a read, present and writable after a write -- so it takes no fault and
        changes nothing.  A zipf touch repeats its hot pages many times over, so this shrinks the
        work of the fault path several-fold.
        """
        if self.addrs is None or len(self.addrs) < 2:
            return self
        keys = self.addrs >> PAGE_SHIFT
        low = int(keys.min())
        span = int(keys.max()) - low + 1
        n = len(keys)
        if span <= 8 * n + (1 << 20) and n < 1 << 31:  # a direct table of first positions
            keys -= low
            rel = keys.astype(np.int32) if span < 1 << 31 else keys
            order = np.arange(n, dtype=np.int32)
            first = np.full(span, n, dtype=np.int32)
            np.minimum.at(first, rel, order)
            keep = first[rel] == order
        else:  # sparse over a wide range: sort instead
            _, where = np.unique(keys, return_index=True)
            keep = np.zeros(n, dtype=bool)
            keep[where] = True
        if keep.all():
            return self
        return Accesses.explicit(self.addrs[keep])

    def first_outside(self, ok_ranges: list[tuple[int, int]]) -> int:
        """Index of the first access not inside any of ``ok_ranges`` (sorted, disjoint); len if none."""
        if len(self) == 0:
            return 0
        if self.addrs is None:
            addr = self.start
            count = 0
            for lo, hi in ok_ranges:
                if hi <= addr:
                    continue
                if lo > addr:
                    return count
                n_in = (min(hi, self.end) - addr + self.stride - 1) // self.stride
                count += n_in
                addr += n_in * self.stride
                if addr >= self.end:
                    return len(self)
            return count if addr < self.end else len(self)
        ok = np.zeros(len(self.addrs), dtype=bool)
        for lo, hi in ok_ranges:
            ok |= (self.addrs >= lo) & (self.addrs < hi)
        bad = np.flatnonzero(~ok)
        return int(bad[0]) if len(bad) else len(self.addrs)


STAMP_SHIFT = 36


def write_stamp(seq: int, addrs: np.ndarray) -> np.ndarray:
    """The contents a write stores: a function of the touch (``seq``) and the page written.

    Independent of the order the fault path handles pages in, so every policy and the reference
    model agree on what a write leaves behind.
    """
    return (np.int64(seq) << STAMP_SHIFT) | ((addrs.astype(np.int64) >> 12) & ((1 << STAMP_SHIFT) - 1))


def spans_touched(acc: Accesses, shift: int) -> list[tuple[int, int]]:
    """Maximal runs of 2**shift-aligned spans that contain at least one access, as [lo, hi) ranges."""
    size = 1 << shift
    if len(acc) == 0:
        return []
    if acc.addrs is None and acc.stride <= size:
        lo, hi = acc.bounds()
        return [(lo, hi)]
    keys = acc.materialize() >> shift
    low, high = int(keys.min()), int(keys.max())
    keys = np.flatnonzero(np.bincount(keys - low)) + low if high - low < 1 << 20 else np.unique(keys)
    breaks = np.flatnonzero(np.diff(keys) != 1) + 1
    runs = []
    for run in np.split(keys, breaks):
        runs.append((int(run[0]) << shift, (int(run[-1]) + 1) << shift))
    return runs
