"""Exact LRU stack distances of a reference stream, computed a batch at a time with numpy.

A fully associative LRU structure of ``C`` entries hits a reference exactly when fewer than ``C``
distinct other keys were referenced since the key's previous reference: its *stack distance*
(R. L. Mattson, J. Gecsei, D. R. Slutz and I. L. Traiger, "Evaluation techniques for storage
hierarchies", IBM Systems Journal 9(2), 1970).  One stack distance therefore answers for every
capacity at once -- an L1 and an L2 TLB, or L1d and L2 caches, fed by the same stream.

:class:`LruStack` keeps the resident keys in recency order between batches and computes the
distances of a batch of ``b`` references in O(b log^2 b + C) numpy work, with no loop over
references: the distance of reference ``i`` whose key was last seen at position ``p`` is the
number of positions ``j`` in ``(p, i)`` whose own previous reference lies before ``p`` -- the
first reference to each distinct key inside the window -- which is an offline dominance count
(:func:`prefix_count_below`).  Keys still in the stack count as one reference each, in recency
order, before the batch.
"""

from __future__ import annotations

import numpy as np

COLD = np.iinfo(np.int64).max  # the distance of a first reference (or one to a key pushed out)


def prefix_count_below(values: np.ndarray, ends: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """For each query ``q``: how many of ``values[:ends[q]]`` are below ``bounds[q]``.

    A merge-sort tree built level by level: ``[0, end)`` splits into at most one aligned block
    of each power-of-two size, and each block's values are sorted once per level, so every query
    is one ``searchsorted`` per level.
    """
    n = len(values)
    out = np.zeros(len(ends), dtype=np.int64)
    if n == 0 or len(ends) == 0:
        return out
    vals = values.astype(np.int64) + 1  # >= 0
    bits = (int(vals.max()) + 1).bit_length()  # a value and the bound above it fit in ``bits``
    span, low = 1 << bits, np.int64((1 << bits) - 1)
    tree = (np.arange(n, dtype=np.int64) << bits) | vals  # level 0: every block one value
    level = 0
    while (1 << level) <= n:
        if level:  # the blocks of the level below, each sorted, pair up: timsort merges the runs
            tree = np.sort(((tree >> (bits + 1)) << bits) | (tree & low), kind="stable")
        use = ((ends >> level) & 1).astype(bool)
        if use.any():
            first = (ends[use] >> (level + 1)) << 1  # the block's index in units of 2**level
            probe = (first << bits) + np.minimum(bounds[use] + 1, span)
            out[use] += np.searchsorted(tree, probe, side="left") - (first << level)
        level += 1
    return out


class LruStack:
    """A fully associative LRU of ``capacity`` keys (uint64), fed in batches.

    :meth:`access` returns each reference's stack distance (:data:`COLD` for a key not in the
    stack) and leaves the stack as the batch left it, keeping the ``capacity`` most recent keys.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.recent = np.empty(0, dtype=np.uint64)  # resident keys, least recent first
        self._sorted = np.empty(0, dtype=np.uint64)  # the same keys, sorted
        self._rank = np.empty(0, dtype=np.int64)  # each sorted key's position in ``recent``

    def __len__(self) -> int:
        return len(self.recent)

    def access(self, keys: np.ndarray) -> np.ndarray:
        keys = np.asarray(keys, dtype=np.uint64)
        b = len(keys)
        if b == 0:
            return np.empty(0, dtype=np.int64)
        resident = len(self.recent)
        # where each key was last seen: earlier in the batch, or its rank in the stack
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        same = np.empty(b, dtype=bool)
        same[0] = False
        np.equal(sk[1:], sk[:-1], out=same[1:])
        prev = np.full(b, -1, dtype=np.int64)
        prev[order[1:][same[1:]]] = resident + order[:-1][same[1:]]
        first = ~same  # first reference of each key in the batch (sorted positions)
        if resident:
            at = np.searchsorted(self._sorted, sk[first])
            at = np.minimum(at, resident - 1)
            hit = self._sorted[at] == sk[first]
            ranks = np.where(hit, self._rank[at], -1)
            prev[order[first]] = ranks
        # distance: stack keys more recent than p, plus first references in (p, i) from before p
        i = np.arange(b, dtype=np.int64)
        inside = prev >= 0
        p = prev[inside]
        from_stack = np.maximum(resident - 1 - p, 0)
        lo = np.maximum(p + 1 - resident, 0)  # batch positions after p
        both = prefix_count_below(prev, np.concatenate([i[inside], lo]), np.concatenate([p, p]))
        count = both[: len(p)] - both[len(p):]
        dist = np.full(b, COLD, dtype=np.int64)
        dist[inside] = from_stack + count
        self._update(keys, order, sk, first, prev)
        return dist

    def _update(self, keys: np.ndarray, order: np.ndarray, sk: np.ndarray, first: np.ndarray,
                prev: np.ndarray) -> None:
        resident = len(self.recent)
        keep = np.ones(resident, dtype=bool)
        seen = prev[order[first]]
        keep[seen[seen >= 0]] = False
        # the batch's keys by their last reference
        last = np.empty(len(keys), dtype=bool)
        last[:-1] = ~np.equal(sk[1:], sk[:-1])
        last[-1] = True
        last_pos = np.sort(order[last])
        recent = np.concatenate([self.recent[keep], keys[last_pos]])
        drop = max(0, len(recent) - self.capacity)
        self.recent = recent[drop:]
        # the sorted view: survivors keep their order; new ranks shift by what went before them
        survivors = keep[self._rank] if resident else np.empty(0, dtype=bool)
        old_sorted = self._sorted[survivors]
        shift = np.cumsum(~keep) if resident else np.empty(0, dtype=np.int64)
        old_rank = self._rank[survivors]
        old_rank = old_rank - (shift[old_rank] if resident else 0) - drop
        new_rank = np.arange(len(last_pos), dtype=np.int64) + int(keep.sum()) - drop
        by_key = np.argsort(keys[last_pos])
        new_keys, new_rank = keys[last_pos][by_key], new_rank[by_key]
        at = np.searchsorted(old_sorted, new_keys)  # new keys are not among the survivors
        merged_keys = np.insert(old_sorted, at, new_keys)
        merged_rank = np.insert(old_rank, at, new_rank)
        live = merged_rank >= 0
        if drop:
            merged_keys, merged_rank = merged_keys[live], merged_rank[live]
        self._sorted = merged_keys
        self._rank = merged_rank


def lru_reference(keys: np.ndarray, capacity: int, stack: list | None = None) -> np.ndarray:
    """The same distances by the textbook per-reference algorithm (for tests; slow)."""
    stack = [] if stack is None else stack
    out = np.empty(len(keys), dtype=np.int64)
    for n, key in enumerate(keys.tolist()):
        try:
            depth = stack.index(key)
        except ValueError:
            out[n] = COLD
        else:
            out[n] = depth
            del stack[depth]
        stack.insert(0, key)
        del stack[capacity:]
    return out
