"""Dedupe keys spilled to disk under a memory budget: the same answers as one in-memory
table whatever is spilled when, the budget held, and the runs deleted as they expire."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adpulse.contracts import Stream
from adpulse.processor.id_set import SLOT_BYTES, IdSet
from adpulse.processor.spilled_keys import BLOCK_KEYS, SpilledKeys
from adpulse.processor.state import SPILL_AT, DedupeKeys, DedupeState

NO_CUTOFF = np.iinfo(np.int32).min


def keys(start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distinct 128-bit keys, spread like hashes."""
    i = np.arange(start, start + n, dtype=np.uint64)
    return i * np.uint64(0x9E3779B97F4A7C15), i * np.uint64(0xC2B2AE3D27D4EB4F)


def test_a_run_finds_exactly_its_keys_and_only_while_its_hour_is_live(tmp_path: Path) -> None:
    runs = SpilledKeys(tmp_path)
    hi, lo = keys(0, 5 * BLOCK_KEYS + 17)  # a partial last block
    check = (lo & np.uint64(0xFFFF_FFFF)).astype(np.uint32)
    runs.add(hi, check, np.full(len(hi), 10, np.int32))
    assert len(runs) == len(hi) and runs.runs == 1
    live = np.full(len(hi), 10, np.int32)
    assert runs.seen(hi, check, live).all()
    assert not runs.seen(hi, check, live + 1).any()  # the hour is past the cutoff
    other_hi, other_lo = keys(10**6, 50_000)
    other_check = (other_lo & np.uint64(0xFFFF_FFFF)).astype(np.uint32)
    assert not runs.seen(other_hi, other_check, np.full(50_000, 0, np.int32)).any()
    # the same first hash with other low bits is another key
    assert not runs.seen(hi, check + np.uint32(1), live).any()


def test_keys_sharing_a_first_hash_across_a_block_boundary_are_found(tmp_path: Path) -> None:
    runs = SpilledKeys(tmp_path)
    n = 3 * BLOCK_KEYS
    hi = np.sort(keys(0, n)[0])
    hi[BLOCK_KEYS - 3 : BLOCK_KEYS + 3] = hi[BLOCK_KEYS]  # six keys, one first hash
    check = np.arange(n, dtype=np.uint32)
    runs.add(hi, check, np.full(n, 7, np.int32))
    assert runs.seen(hi, check, np.full(n, 7, np.int32)).all()


def test_merging_an_hours_runs_keeps_every_key_and_expiry_deletes_the_files(
    tmp_path: Path,
) -> None:
    runs = SpilledKeys(tmp_path)
    parts = [keys(k * 100_000, 30_000 + k) for k in range(5)]
    for hi, lo in parts:
        runs.add(hi, (lo & np.uint64(0xFFFF_FFFF)).astype(np.uint32), np.full(len(hi), 3, np.int32))
    runs.add(*_spilled(keys(900_000, 100), hour=4))
    assert runs.runs == 6
    runs.compact(newest=4)  # hour 3 is past: its five runs become one
    assert runs.runs == 2 and len(list(tmp_path.iterdir())) == 2
    for hi, lo in parts:
        check = (lo & np.uint64(0xFFFF_FFFF)).astype(np.uint32)
        assert runs.seen(hi, check, np.full(len(hi), 3, np.int32)).all()
    runs.expire(floor=4)
    assert runs.runs == 1 and len(runs) == 100 and len(list(tmp_path.iterdir())) == 1


def _spilled(k: tuple[np.ndarray, np.ndarray], hour: int) -> tuple[np.ndarray, ...]:
    hi, lo = k
    return hi, (lo & np.uint64(0xFFFF_FFFF)).astype(np.uint32), np.full(len(hi), hour, np.int32)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_spilling_at_any_point_answers_as_one_table(tmp_path: Path, seed: int) -> None:
    # Batches of new keys and repeats (some expired, some live) over 12 hours, with
    # per-row cutoffs; one side spills everything older than a random hour between
    # batches, the other is one in-memory table. Their answers must match row for row.
    rng = np.random.default_rng(seed)
    tiered = DedupeKeys(SpilledKeys(tmp_path))
    reference = IdSet()
    known_hi, known_lo = keys(0, 0)
    next_key = 0
    for hour in range(12):
        for _ in range(4):
            fresh_hi, fresh_lo = keys(next_key, int(rng.integers(500, 3000)))
            next_key += len(fresh_hi)
            take = rng.choice(len(known_hi), size=min(len(known_hi), 800), replace=False)
            hi = np.concatenate([fresh_hi, known_hi[take]])
            lo = np.concatenate([fresh_lo, known_lo[take]])
            bucket = np.full(len(hi), hour, np.int32) - rng.integers(0, 2, len(hi)).astype(np.int32)
            cutoff = (hour - rng.integers(1, 5, len(hi))).astype(np.int32)
            expected = reference.check_and_add(hi, lo, bucket, cutoff, hour - 5)
            got = tiered.check_and_add(hi, lo, bucket, cutoff, hour - 5)
            assert got.tolist() == expected.tolist()
            known_hi = np.concatenate([known_hi, fresh_hi])
            known_lo = np.concatenate([known_lo, fresh_lo])
            threshold = hour + 1 - int(rng.integers(0, 4))
            assert tiered.spilled is not None
            tiered.spilled.add(*tiered.table.take_before(threshold, hour - 5))
            tiered.spilled.compact(newest=hour)
            tiered.spilled.expire(hour - 5)
    assert tiered.spilled is not None and tiered.spilled.runs > 0


def test_the_state_spills_the_oldest_hours_to_stay_within_its_budget(tmp_path: Path) -> None:
    budget = 1 << 20  # 65,536 slots
    state = DedupeState(budget, tmp_path / "spill")
    table = state.sets[Stream.IMPRESSIONS]
    for hour in range(10):
        hi, lo = keys(hour * 10_000, 10_000)
        n = len(hi)
        seen = table.check_and_add(
            hi, lo, np.full(n, hour, np.int32), np.full(n, NO_CUTOFF, np.int32)
        )
        assert not seen.any()
        state.bound(floor=0, newest=hour)
        assert table.table.used <= SPILL_AT * budget // SLOT_BYTES
        assert state.sets[Stream.IMPRESSIONS].table.nbytes <= budget
    assert state.spilled_keys > 0 and len(state) == 100_000
    # every key is still seen, in memory or on disk
    hi, lo = keys(0, 100_000)
    hours = (np.arange(100_000) // 10_000).astype(np.int32)
    assert state.sets[Stream.IMPRESSIONS].check_and_add(hi, lo, hours, hours).all()
    # hours before the floor are deleted from disk; the rest stay seen
    state.bound(floor=5, newest=9)
    assert len(state) == 50_000
    assert (
        state.sets[Stream.IMPRESSIONS]
        .check_and_add(hi[50_000:], lo[50_000:], hours[50_000:], hours[50_000:])
        .all()
    )
    state.close()
    assert not (tmp_path / "spill").exists()


def test_a_copy_keeps_its_answers_while_the_original_adds_keys(tmp_path: Path) -> None:
    state = DedupeState(1 << 16, tmp_path)
    hi, lo = keys(0, 20_000)
    n = len(hi)
    keys_of = state.sets[Stream.CLICKS]
    keys_of.check_and_add(hi, lo, np.full(n, 1, np.int32), np.full(n, NO_CUTOFF, np.int32))
    state.bound(floor=0, newest=2)
    saved = state.copy()
    more_hi, more_lo = keys(50_000, 100)
    keys_of.check_and_add(more_hi, more_lo, np.full(100, 2, np.int32), np.full(100, 0, np.int32))
    again = saved.sets[Stream.CLICKS].check_and_add(
        more_hi, more_lo, np.full(100, 2, np.int32), np.full(100, 0, np.int32)
    )
    assert not again.any()
    assert (
        saved.sets[Stream.CLICKS]
        .check_and_add(hi, lo, np.full(n, 1, np.int32), np.full(n, 0, np.int32))
        .all()
    )
