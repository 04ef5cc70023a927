"""A vectorized set of event keys with event-time retention, for deduplication.

Python sets of millions of keys cost about a microsecond per insert once they outgrow
the CPU caches; this open-addressing table (linear probing over NumPy arrays, one
vectorized probe round at a time) checks and inserts a whole batch at once.

Each slot is 16 bytes, read and written as one unit (a ``complex128`` view of two
``uint64`` words, which NumPy gathers ~4x faster than three separate arrays: a probe
costs one cache miss instead of three): the key's first 64-bit hash, then the low 32
bits of its second hash above the 32-bit event-time *bucket* (hour) it was seen in.
Keys are thus 96 bits: with a billion keys alive, the chance that any two collide is
below 1e-11.

A key is a member only while its bucket is at or after the caller's cutoff bucket, so
membership is exact whatever the table's compaction schedule, and the same rule
rebuilds the set from the warehouse after a restart.
"""

from __future__ import annotations

from typing import Final

import numpy as np

_EMPTY: Final = np.iinfo(np.int32).min
_MIN_SIZE: Final = 1 << 12
#: Buckets are stored as ``bucket - _EMPTY`` (never 0 for a real hour): 0 marks a free slot.
_BIAS: Final = np.int64(-_EMPTY)
_LOW32: Final = np.uint64(0xFFFF_FFFF)
_SHIFT: Final = np.uint64(32)
#: Bytes of table per slot.
SLOT_BYTES: Final = 16
#: The table grows (or is compacted) when inserting would fill more than this share of
#: its slots, and is rebuilt at most half full: 23 to 64 bytes per live key. Linear
#: probing stays cheap up to here (~6 probes per new key at the top, ~2.5 on average).
MAX_LOAD: Final = 0.7
#: Keys per vectorized probe pass: bounds the temporaries (~150 bytes per key) when
#: millions of keys come at once (a rebuild; a measured spike of ~600 MB for 4M keys).
_SLICE: Final = 1 << 18


class IdSet:
    """Keys are pairs of uint64 (``hi``, ``lo``); buckets are int32 hour numbers."""

    def __init__(self, capacity: int = _MIN_SIZE) -> None:
        self._alloc(max(_MIN_SIZE, 1 << int(capacity - 1).bit_length()))

    def _alloc(self, size: int) -> None:
        self._mask = size - 1
        # Filled, not zeroed: calloc'd pages would fault on first write, in the hot path.
        self._words = np.full(2 * size, 0, dtype=np.uint64)  # (hi, tag) per slot
        self._slots = self._words.view(np.complex128)  # the same memory, a slot per item
        self._used = 0

    def __len__(self) -> int:
        return int(np.count_nonzero(self._words[1::2] & _LOW32))

    def copy(self) -> IdSet:
        """An independent copy (the processor's isolation of a failed batch undoes a
        piece's insertions by going back to one)."""
        other = IdSet.__new__(IdSet)
        other._mask = self._mask
        other._words = self._words.copy()
        other._slots = other._words.view(np.complex128)
        other._used = self._used
        return other

    @property
    def capacity(self) -> int:
        return len(self._slots)

    @property
    def used(self) -> int:
        """Occupied slots (live or expired entries)."""
        return self._used

    @property
    def nbytes(self) -> int:
        return int(self._words.nbytes)

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
        # In slices: one probe pass over millions of keys (a state rebuild after a
        # restart) would hold ~150 bytes of temporaries per key.
        for start in range(0, n, _SLICE):
            part = slice(start, start + _SLICE)
            seen[part] = self._probe(hi[part], lo[part], bucket[part], cutoff[part])
        return seen

    def _probe(
        self, hi: np.ndarray, lo: np.ndarray, bucket: np.ndarray, cutoff: np.ndarray
    ) -> np.ndarray:
        """:meth:`check_and_add` for keys that fit without growing the table."""
        n = len(hi)
        seen = np.zeros(n, dtype=bool)
        hi = np.ascontiguousarray(hi, dtype=np.uint64)
        check = lo.astype(np.uint64) << _SHIFT  # the part of lo kept, above the bucket
        tags = check | (bucket.astype(np.int64) + _BIAS).astype(np.uint64)
        pos = (hi & np.uint64(self._mask)).astype(np.intp)
        active = np.arange(n)
        while active.size:
            p = pos[active]
            got = self._slots[p].view(np.uint64)
            slot_hi, slot_tag = got[0::2], got[1::2]
            stored = slot_tag & _LOW32
            occupied = stored != 0
            a_hi = hi[active]
            same = occupied & (slot_hi == a_hi) & ((slot_tag & ~_LOW32) == check[active])
            if same.any():
                matched = active[same]
                live = stored[same].astype(np.int64) - _BIAS >= cutoff[matched]
                seen[matched] = live
                # An expired entry is renewed: the record counts as new.
                renew = matched[~live]
                self._words[2 * p[same][~live] + 1] = tags[renew]
            free = ~occupied
            lost = active[:0]
            if free.any():
                claim, cp = active[free], p[free]
                pairs = np.empty(2 * len(claim), dtype=np.uint64)
                pairs[0::2] = hi[claim]
                pairs[1::2] = tags[claim]
                self._slots[cp] = pairs.view(np.complex128)
                # Two keys of the batch may claim one slot: the last write won.
                back = self._slots[cp].view(np.uint64)
                won = (back[0::2] == pairs[0::2]) & (back[1::2] == pairs[1::2])
                lost = claim[~won]
                self._used += int(won.sum())
            rest = np.concatenate([active[occupied & ~same], lost])
            pos[rest] = (pos[rest] + 1) & self._mask
            active = rest
        return seen

    def live_buckets(self, floor: int) -> tuple[np.ndarray, np.ndarray]:
        """(hours, key counts) of the entries with an hour at or after ``floor``."""
        stored = (self._words[1::2] & _LOW32).astype(np.int64)
        hours = stored[(stored != 0) & (stored - _BIAS >= floor)] - _BIAS
        if hours.size == 0:
            return hours, hours
        low = int(hours.min())
        counts = np.bincount(hours - low)  # O(n): hours span a horizon, not a range of ids
        present = np.flatnonzero(counts)
        return present + low, counts[present]

    def take_before(self, threshold: int, floor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Remove the entries with an hour before ``threshold`` and return those at or
        after ``floor`` (the others are dead): their (hi, 32 bits of lo, hour)."""
        words = self._words
        tag = words[1::2]
        stored = (tag & _LOW32).astype(np.int64) - _BIAS
        occupied = (tag & _LOW32) != 0
        taken = occupied & (stored >= floor) & (stored < threshold)
        out = (
            words[0::2][taken],
            (tag[taken] >> _SHIFT).astype(np.uint32),
            stored[taken].astype(np.int32),
        )
        keep = occupied & (stored >= threshold)
        hi, kept_tag = words[0::2][keep], tag[keep]
        del words, tag, stored, occupied, taken, keep
        self._rebuild(hi, kept_tag, 0)
        return out

    def _reserve(self, incoming: int, min_cutoff: int) -> None:
        """Keep the load factor at most :data:`MAX_LOAD`, dropping expired entries when
        rebuilding."""
        if self._used + incoming <= MAX_LOAD * self.capacity:
            return
        words = self._words
        tag = words[1::2]
        stored = (tag & _LOW32).astype(np.int64)
        keep = (stored != 0) & (stored - _BIAS >= min_cutoff)
        hi, kept_tag = words[0::2][keep], tag[keep]
        del words, tag, stored, keep
        self._rebuild(hi, kept_tag, incoming)

    def _rebuild(self, hi: np.ndarray, kept_tag: np.ndarray, incoming: int) -> None:
        """A table at most half full with these entries and room for ``incoming``."""
        live = len(hi)
        size = _MIN_SIZE
        while (live + incoming) * 2 > size:
            size *= 2
        # The live keys are copies now: the old table goes before a new one is made (or
        # is cleared and reused at the same size), so a rebuild never holds two tables.
        if size == self.capacity:
            self._words.fill(0)
            self._used = 0
        else:
            self._words = np.zeros(0, dtype=np.uint64)
            self._slots = self._words.view(np.complex128)
            self._alloc(size)
        if live:
            self.check_and_add(
                hi,
                kept_tag >> _SHIFT,
                ((kept_tag & _LOW32).astype(np.int64) - _BIAS).astype(np.int32),
                np.full(live, _EMPTY, np.int32),
            )
