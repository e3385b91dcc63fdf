"""Sets of pages of one mapping, stored compactly.

A snapshot records, for every VMA of every process, which of its pages have an entry in the page
tables.  A 64 GiB segment has 16 million pages and may be mapped by hundreds of processes, so a
set is never a Python object per page: it is sorted, disjoint runs ``(start, length)`` of page
indices (one run for a fully touched segment) or a packed bitmap (one bit per page, for scattered
pages), whichever takes fewer bytes.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

EMPTY, RUNS, BITS = 0, 1, 2
RUN_BYTES = 16  # a run is two uint64


def runs_mask(starts: np.ndarray, lengths: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Membership of pages ``lo..hi-1`` in sorted, disjoint runs, as a boolean array."""
    a = np.clip(starts.astype(np.int64), lo, hi) - lo
    b = np.clip((starts + lengths).astype(np.int64), lo, hi) - lo
    edges = np.zeros(hi - lo + 1, dtype=np.int32)
    np.add.at(edges, a, 1)
    np.add.at(edges, b, -1)
    return np.cumsum(edges[:-1]) > 0


def mask_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths of the runs of True in a boolean array."""
    edges = np.flatnonzero(np.diff(np.concatenate(([False], mask, [False])).astype(np.int8)))
    starts = edges[0::2]
    return starts.astype(np.uint64), (edges[1::2] - starts).astype(np.uint64)


class PageSet:
    """Page indices in ``[0, npages)``: runs or a packed bitmap (see the module docstring)."""

    __slots__ = ("bits", "lengths", "npages", "starts")

    def __init__(self, npages: int, starts: np.ndarray | None = None, lengths: np.ndarray | None = None,
                 bits: np.ndarray | None = None) -> None:
        self.npages = int(npages)
        self.starts = starts
        self.lengths = lengths
        self.bits = bits

    @classmethod
    def empty(cls, npages: int) -> PageSet:
        return cls(npages)

    @classmethod
    def from_runs(cls, npages: int, starts: np.ndarray, lengths: np.ndarray) -> PageSet:
        """From sorted, disjoint runs; kept as a bitmap when that is smaller."""
        starts = np.asarray(starts, dtype=np.uint64)
        lengths = np.asarray(lengths, dtype=np.uint64)
        keep = lengths > 0
        starts, lengths = starts[keep], lengths[keep]
        if len(starts) == 0:
            return cls(npages)
        ends = starts + lengths
        first = np.concatenate(([True], starts[1:] != ends[:-1]))  # merge touching runs
        last = np.concatenate((first[1:], [True]))
        starts, lengths = starts[first], ends[last] - starts[first]
        if len(starts) * RUN_BYTES <= (npages + 7) // 8:
            return cls(npages, starts=starts, lengths=lengths)
        return cls(npages, bits=np.packbits(runs_mask(starts, lengths, 0, npages)))

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> PageSet:
        starts, lengths = mask_runs(mask)
        if len(starts) * RUN_BYTES <= (len(mask) + 7) // 8:
            return cls(len(mask), starts=starts, lengths=lengths) if len(starts) else cls(len(mask))
        return cls(len(mask), bits=np.packbits(mask))

    @property
    def encoding(self) -> int:
        if self.bits is not None:
            return BITS
        return RUNS if self.starts is not None and len(self.starts) else EMPTY

    def count(self) -> int:
        if self.bits is not None:
            return int(np.unpackbits(self.bits, count=self.npages).sum())
        return int(self.lengths.sum()) if self.starts is not None else 0

    def mask(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Membership of pages ``lo..hi-1`` as a boolean array."""
        hi = self.npages if hi is None else min(hi, self.npages)
        lo = min(lo, hi)
        if self.bits is not None:
            first = lo // 8
            bits = np.unpackbits(self.bits[first:(hi + 7) // 8], count=hi - first * 8)
            return bits[lo - first * 8:].astype(bool)
        if self.starts is None:
            return np.zeros(hi - lo, dtype=bool)
        i = max(int(np.searchsorted(self.starts, lo, side="right")) - 1, 0)
        j = int(np.searchsorted(self.starts, hi, side="left"))
        return runs_mask(self.starts[i:j], self.lengths[i:j], lo, hi)

    def runs(self) -> tuple[np.ndarray, np.ndarray]:
        if self.bits is not None:
            return mask_runs(self.mask())
        if self.starts is None:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint64)
        return self.starts, self.lengths

    def chunks(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(lo, mask)`` for every ``size``-page window holding at least one page (bounded memory).

        ``size`` must be a multiple of 8.
        """
        if self.encoding == EMPTY:
            return
        if self.bits is not None:
            first, last = 0, (self.npages - 1) // size
        else:
            first = int(self.starts[0]) // size
            last = int(self.starts[-1] + self.lengths[-1] - 1) // size
        for n in range(first, last + 1):
            lo = n * size
            mask = self.mask(lo, lo + size)
            if mask.any():
                yield lo, mask

    def payload(self) -> np.ndarray:
        """What a snapshot file stores: the flattened runs (uint64) or the bitmap (uint8)."""
        if self.bits is not None:
            return self.bits
        if self.starts is None:
            return np.zeros(0, dtype=np.uint64)
        return np.stack([self.starts, self.lengths], axis=1).reshape(-1)

    @classmethod
    def from_payload(cls, npages: int, encoding: int, data: np.ndarray) -> PageSet:
        if encoding == BITS:
            return cls(npages, bits=np.asarray(data, dtype=np.uint8))
        if encoding == RUNS:
            pairs = np.asarray(data, dtype=np.uint64).reshape(-1, 2)
            return cls(npages, starts=pairs[:, 0].copy(), lengths=pairs[:, 1].copy())
        return cls(npages)

    def __repr__(self) -> str:
        kind = {EMPTY: "empty", RUNS: "runs", BITS: "bits"}[self.encoding]
        return f"<PageSet {self.count()}/{self.npages} pages, {kind}>"
