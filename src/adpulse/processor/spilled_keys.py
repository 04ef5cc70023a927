"""Dedupe keys spilled to disk: one sorted run of keys per event-time hour.

The in-memory :class:`~adpulse.processor.id_set.IdSet` costs 23 to 64 bytes per live key;
a 24-hour horizon at 5,000 events/s is 432M keys. When its table outgrows the memory
budget, the oldest hours leave it for a *run* on disk: the keys of one hour (96 bits each:
the first 64-bit hash and 32 bits of the second), sorted, in a file of 12 bytes per key.

What stays in memory is small and fixed per key:

- one blocked Bloom filter over all runs, 12 bits per key when full, 1.5 to 1.9 bytes
  (one 64-bit word holds all of a key's bits, so a probe is one gather): it answers
  "certainly in no run" for ~99.5 % of the new keys. Expired runs leave their bits
  until the filter is rebuilt from the runs' files (when as many keys are expired as
  live, or it is full: amortized);
- per run, a fence of the first key of every block of :data:`BLOCK_KEYS` keys (0.03
  bytes per key): a key that passes the filter is confirmed in each live run by a binary
  search within its block over the file, mapped for that call only, so membership stays
  exact and the file's pages do not stay in this process's RSS.

A key in a run is a member while the run's hour is at or after the row's cutoff hour: the
same rule as the in-memory table. Runs are a cache of what the warehouse holds: the
processor deletes them and rebuilds its state from the committed facts after a restart
(:meth:`adpulse.processor.pipeline.Processor.recover`), so a run never holds a key of a
batch that was not committed.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

#: Keys per block of a run file: one ``pread`` confirms a key.
BLOCK_KEYS: Final = 256
#: Bits of the Bloom filter per key (blocked in 64-bit words): ~0.6 % false positives
#: when full. The filter is rebuilt 50 % larger than its keys when it fills up.
BLOOM_BITS: Final = 12
#: Runs of one hour that are merged into one even while the hour is the newest.
MAX_RUNS_PER_HOUR: Final = 4
_MERGE_SLICES: Final = 16
#: Keys read back at a time when the filter is rebuilt.
_READ_KEYS: Final = 1 << 20
#: Bits set per key in its filter word.
BLOOM_HASHES: Final = 5
_RECORD: Final = np.dtype([("hi", "<u8"), ("check", "<u4")])
#: Bytes per key on disk.
DISK_KEY_BYTES: Final = _RECORD.itemsize
_SIX: Final = np.uint64(63)


def _filter_masks(hi: np.ndarray, check: np.ndarray) -> np.ndarray:
    """Each key's bits in its filter word, from hash bits that do not pick the word."""
    bits = (hi & np.uint64(0xFFFF_FFFF)) | (check.astype(np.uint64) << np.uint64(32))
    mask = np.zeros(len(hi), dtype=np.uint64)
    for i in range(BLOOM_HASHES):
        mask |= np.uint64(1) << ((bits >> np.uint64(6 * i)) & _SIX)
    return mask


def _filter_words(hi: np.ndarray, words: int) -> np.ndarray:
    """The filter word of each key: multiply-shift of its top 32 bits onto ``words``."""
    return (((hi >> np.uint64(32)) * np.uint64(words)) >> np.uint64(32)).astype(np.intp)


@dataclass(slots=True)
class _Run:
    bucket: int
    path: Path
    fd: int
    count: int
    fence: np.ndarray  # uint64: the first hi of each block

    @property
    def nbytes(self) -> int:
        return int(self.fence.nbytes)

    def position(self, key: np.uint64) -> int:
        """Index of the first record whose hi is >= ``key``."""
        block = max(int(np.searchsorted(self.fence, key, side="left")) - 1, 0)
        got = self.read(block * BLOCK_KEYS, min((block + 1) * BLOCK_KEYS, self.count))
        return block * BLOCK_KEYS + int(np.searchsorted(got["hi"], key, side="left"))

    def read(self, start: int, end: int) -> np.ndarray:
        """Records ``start`` to ``end`` of the file."""
        if end <= start:
            return np.empty(0, dtype=_RECORD)
        size = _RECORD.itemsize
        data = os.pread(self.fd, (end - start) * size, start * size)
        return np.frombuffer(data, dtype=_RECORD)

    def contains(self, hi: np.ndarray, check: np.ndarray) -> np.ndarray:
        """Exact membership: a binary search of each key within the block(s) its fence
        allows, over the file mapped for this call only (so its pages do not stay in
        this process's RSS)."""
        found = np.zeros(len(hi), dtype=bool)
        with mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ) as mapped:
            records = np.frombuffer(mapped, dtype=_RECORD, count=self.count)
            keys_hi, keys_check = records["hi"], records["check"]
            # The first record >= hi lies after the last fence < hi and at or before
            # the next fence (equal first hashes may straddle a block boundary).
            below = np.searchsorted(self.fence, hi, side="left")
            lo = np.maximum(below - 1, 0) * BLOCK_KEYS
            top = np.minimum(below * BLOCK_KEYS, self.count)
            while True:
                active = np.flatnonzero(lo < top)
                if active.size == 0:
                    break
                mid = (lo[active] + top[active]) // 2
                right = keys_hi[mid] < hi[active]
                lo[active[right]] = mid[right] + 1
                top[active[~right]] = mid[~right]
            # lo: the first record >= hi; walk the records with this same first hash.
            pos = lo
            rows = np.flatnonzero(pos < self.count)
            while rows.size:
                at = pos[rows]
                same = keys_hi[at] == hi[rows]
                rows, at = rows[same], at[same]
                found[rows[keys_check[at] == check[rows]]] = True
                pos[rows] = at + 1
                rows = rows[(at + 1 < self.count) & ~found[rows]]
            del records, keys_hi, keys_check
        return found


class SpilledKeys:
    """The runs of one stream's keys, in ``directory`` (created on the first spill)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._runs: list[_Run] = []
        self._sequence = 0
        #: One filter over every run's keys (and, until it is rebuilt, expired ones).
        self._filter = np.zeros(1, dtype=np.uint64)
        self._filtered = 0

    def __len__(self) -> int:
        return sum(r.count for r in self._runs)

    @property
    def nbytes(self) -> int:
        """Bytes of memory: the filter and the runs' fences."""
        return int(self._filter.nbytes) + sum(r.nbytes for r in self._runs)

    @property
    def disk_bytes(self) -> int:
        return len(self) * DISK_KEY_BYTES

    @property
    def runs(self) -> int:
        return len(self._runs)

    def add(self, hi: np.ndarray, check: np.ndarray, bucket: np.ndarray) -> None:
        """Write the keys as one run per hour (the keys must be new to these runs)."""
        if len(hi) == 0:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        low = int(bucket.min())
        counts = np.bincount(bucket.astype(np.int64) - low)
        for hour in (np.flatnonzero(counts) + low).tolist():
            rows = np.flatnonzero(bucket == hour) if len(counts) > 1 else slice(None)
            hour_hi = hi[rows]
            order = np.argsort(hour_hi)
            self._write(hour, hour_hi[order], check[rows][order])

    def _write(self, bucket: int, hi: np.ndarray, check: np.ndarray) -> None:
        records = np.empty(len(hi), dtype=_RECORD)
        records["hi"], records["check"] = hi, check
        self._sequence += 1
        path = self.directory / f"{bucket}-{self._sequence}.keys"
        records.tofile(path)
        fd = os.open(path, os.O_RDONLY)
        if (self._filtered + len(hi)) * BLOOM_BITS > len(self._filter) * 64:
            self._build_filter((len(self) + len(hi)) * 3 // 2)
        self._runs.append(_Run(bucket, path, fd, len(hi), hi[::BLOCK_KEYS].copy()))
        self._filter_add(hi, check)

    def _filter_add(self, hi: np.ndarray, check: np.ndarray) -> None:
        words = _filter_words(hi, len(self._filter))
        np.bitwise_or.at(self._filter, words, _filter_masks(hi, check))
        self._filtered += len(hi)

    def _build_filter(self, capacity: int) -> None:
        """A new filter with room for ``capacity`` keys, of the runs' keys read back
        (when it fills up, or holds as many expired keys as live ones: amortized)."""
        self._filter = np.zeros(max(1, -(-capacity * BLOOM_BITS // 64)), dtype=np.uint64)
        self._filtered = 0
        for run in self._runs:
            for start in range(0, run.count, _READ_KEYS):
                part = run.read(start, min(start + _READ_KEYS, run.count))
                self._filter_add(part["hi"], part["check"])

    def compact(self, newest: int) -> None:
        """Merge the runs of each hour before ``newest`` that has several into one, so a
        probe reads one filter per past hour (the newest hour's runs are merged once it
        is past)."""
        hours: dict[int, list[_Run]] = {}
        for run in self._runs:
            hours.setdefault(run.bucket, []).append(run)
        for hour, runs in hours.items():
            if len(runs) > 1 and (hour < newest or len(runs) > MAX_RUNS_PER_HOUR):
                self._merge(hour, runs)

    def _merge(self, bucket: int, runs: list[_Run]) -> None:
        """One run from ``runs``, in slices of the hash range: the temporaries stay near
        1/:data:`_MERGE_SLICES` of the hour's keys."""
        count = sum(r.count for r in runs)
        self._sequence += 1
        path = self.directory / f"{bucket}-{self._sequence}.keys"
        fences: list[np.ndarray] = []
        written = 0
        # Slice bounds on the first hash; each run's slice is found with its fence.
        bounds = [np.uint64(i << 60) for i in range(1, _MERGE_SLICES)]
        starts = [np.zeros(len(runs), dtype=np.int64)]
        for bound in bounds:
            starts.append(np.array([r.position(bound) for r in runs], dtype=np.int64))
        starts.append(np.array([r.count for r in runs], dtype=np.int64))
        with path.open("wb") as out:
            for lo_at, hi_at in zip(starts[:-1], starts[1:], strict=True):
                part = np.concatenate(
                    [r.read(int(a), int(b)) for r, a, b in zip(runs, lo_at, hi_at, strict=True)]
                )
                if len(part) == 0:
                    continue
                part = part[np.argsort(part["hi"], kind="stable")]
                part.tofile(out)
                # Fence entries at the global multiples of BLOCK_KEYS.
                first = -written % BLOCK_KEYS
                fences.append(part["hi"][first::BLOCK_KEYS].copy())
                written += len(part)
        fd = os.open(path, os.O_RDONLY)
        merged = _Run(bucket, path, fd, count, np.concatenate(fences))
        for run in runs:
            _remove(run)
        gone = {id(r) for r in runs}
        self._runs = [r for r in self._runs if id(r) not in gone] + [merged]

    def seen(self, hi: np.ndarray, check: np.ndarray, cutoff: np.ndarray) -> np.ndarray:
        """Mask of keys in a run whose hour is at or after the key's ``cutoff``."""
        seen = np.zeros(len(hi), dtype=bool)
        if not self._runs or len(hi) == 0:
            return seen
        masks = _filter_masks(hi, check)
        words = _filter_words(hi, len(self._filter))
        maybe = np.flatnonzero((self._filter[words] & masks) == masks)
        for run in self._runs:
            rows = maybe[~seen[maybe] & (cutoff[maybe] <= run.bucket)]
            if rows.size:
                seen[rows[run.contains(hi[rows], check[rows])]] = True
        return seen

    def expire(self, floor: int) -> None:
        """Delete the runs of hours before ``floor`` (no key in them is live anywhere)."""
        kept = []
        for run in self._runs:
            if run.bucket < floor:
                _remove(run)
            else:
                kept.append(run)
        self._runs = kept
        if self._filtered > 2 * len(self):
            self._build_filter(len(self) * 3 // 2)

    def clear(self) -> None:
        for run in self._runs:
            _remove(run)
        self._runs = []
        self._build_filter(0)

    def share(self) -> SpilledKeys:
        """Another view of the same runs (they are immutable; a spill or an expiry of
        either is not seen by the other, and deleted files stay readable while open)."""
        other = SpilledKeys(self.directory)
        other._runs = list(self._runs)
        other._sequence = self._sequence
        # Shared, not copied: the original only ever sets more bits in it (a key of a
        # later run is then a filter hit here, which the runs of this view deny).
        other._filter = self._filter
        other._filtered = self._filtered
        return other


def _remove(run: _Run) -> None:
    with contextlib.suppress(OSError):
        os.close(run.fd)
    run.path.unlink(missing_ok=True)
