"""A vectorized set of 128-bit event keys with event-time retention, for deduplication.

Python sets of millions of keys cost about a microsecond per insert once they outgrow
the CPU caches; this open-addressing table (linear probing over NumPy arrays, one
vectorized probe round at a time) checks and inserts a whole batch at once.

Every key carries the event-time *bucket* (hour) it was seen in. A key is a member only
while its bucket is at or after the caller's cutoff bucket, so membership is exact
whatever the table's compaction schedule, and the same rule rebuilds the set from the
warehouse after a restart.
"""

from __future__ import annotations

import numpy as np

_EMPTY = np.iinfo(np.int32).min
_MIN_SIZE = 1 << 12


class IdSet:
    """Keys are pairs of uint64 (``hi``, ``lo``); buckets are int32 hour numbers."""

    def __init__(self, capacity: int = _MIN_SIZE) -> None:
        self._alloc(max(_MIN_SIZE, 1 << int(capacity - 1).bit_length()))

    def _alloc(self, size: int) -> None:
        self._mask = size - 1
        # Filled, not zeroed: calloc'd pages would fault on first write, in the hot path.
        self._hi = np.full(size, 0, dtype=np.uint64)
        self._lo = np.full(size, 0, dtype=np.uint64)
        self._bucket = np.full(size, _EMPTY, dtype=np.int32)
        self._used = 0

    def __len__(self) -> int:
        return int(np.count_nonzero(self._bucket != _EMPTY))

    def copy(self) -> IdSet:
        """An independent copy (the processor's isolation of a failed batch undoes a
        piece's insertions by going back to one)."""
        other = IdSet.__new__(IdSet)
        other._mask = self._mask
        other._hi = self._hi.copy()
        other._lo = self._lo.copy()
        other._bucket = self._bucket.copy()
        other._used = self._used
        return other

    @property
    def capacity(self) -> int:
        return len(self._bucket)

    def check_and_add(
        self,
        hi: np.ndarray,
        lo: np.ndarray,
        bucket: np.ndarray,
        cutoff: np.ndarray,
        keep_from: int | None = None,
    ) -> np.ndarray:
        """Return a mask of keys already present (with bucket >= their ``cutoff``).

        Keys not present are added with their bucket. A key present only with an expired
        bucket counts as new and gets the new bucket. The batch must hold no duplicate
        pair (deduplicate within the batch first).

        ``keep_from``: the oldest bucket still live for ANY key (all partitions), used
        when the table is compacted; by default the batch's own smallest cutoff.
        """
        n = len(hi)
        seen = np.zeros(n, dtype=bool)
        if n == 0:
            return seen
        floor = int(cutoff.min()) if keep_from is None else min(keep_from, int(cutoff.min()))
        self._reserve(n, floor)
        pos = (hi & np.uint64(self._mask)).astype(np.intp)
        active = np.arange(n)
        while active.size:
            p = pos[active]
            slot_bucket = self._bucket[p]
            occupied = slot_bucket != _EMPTY
            a_hi, a_lo = hi[active], lo[active]
            same = occupied & (self._hi[p] == a_hi) & (self._lo[p] == a_lo)
            if same.any():
                matched = active[same]
                live = slot_bucket[same] >= cutoff[matched]
                seen[matched] = live
                # An expired entry is renewed: the record counts as new.
                self._bucket[p[same][~live]] = bucket[matched[~live]]
            free = ~occupied
            lost = active[:0]
            if free.any():
                claim, cp = active[free], p[free]
                self._hi[cp] = a_hi[free]
                self._lo[cp] = a_lo[free]
                self._bucket[cp] = bucket[claim]
                # Two keys of the batch may claim one slot: the last write won.
                won = (self._hi[cp] == a_hi[free]) & (self._lo[cp] == a_lo[free])
                lost = claim[~won]
                self._used += int(won.sum())
            rest = np.concatenate([active[occupied & ~same], lost])
            pos[rest] = (pos[rest] + 1) & self._mask
            active = rest
        return seen

    def _reserve(self, incoming: int, min_cutoff: int) -> None:
        """Keep the load factor at most 1/2, dropping expired entries when rebuilding."""
        if (self._used + incoming) * 2 <= self.capacity:
            return
        keep = (self._bucket != _EMPTY) & (self._bucket >= min_cutoff)
        hi, lo, bucket = self._hi[keep], self._lo[keep], self._bucket[keep]
        live = len(bucket)
        size = _MIN_SIZE
        while (live + incoming) * 4 > size:
            size *= 2
        self._alloc(size)
        if live:
            self.check_and_add(hi, lo, bucket, np.full(live, _EMPTY, np.int32))
