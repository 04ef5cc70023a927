"""The dedupe step's key set alone: membership by event-time bucket against a cutoff, and
growth and compaction that never lose a key still live for some partition."""

from __future__ import annotations

import numpy as np

from adpulse.processor.id_set import IdSet

NO_CUTOFF = np.iinfo(np.int32).min


def keys(start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distinct 128-bit keys, spread like hashes (some share a slot, as real ones do)."""
    i = np.arange(start, start + n, dtype=np.uint64)
    return i * np.uint64(0x9E3779B97F4A7C15), i * np.uint64(0xC2B2AE3D27D4EB4F)


def check(s: IdSet, hi: np.ndarray, lo: np.ndarray, bucket: int, cutoff: int) -> np.ndarray:
    n = len(hi)
    return s.check_and_add(hi, lo, np.full(n, bucket, np.int32), np.full(n, cutoff, np.int32))


def test_a_key_is_seen_while_its_bucket_is_at_or_after_the_cutoff() -> None:
    s = IdSet()
    hi, lo = keys(0, 3)
    assert check(s, hi, lo, bucket=10, cutoff=NO_CUTOFF).tolist() == [False] * 3
    assert check(s, hi, lo, bucket=10, cutoff=10).tolist() == [True] * 3
    # past the cutoff the key counts as new, and is renewed with the new bucket
    assert check(s, hi, lo, bucket=12, cutoff=11).tolist() == [False] * 3
    assert check(s, hi, lo, bucket=12, cutoff=12).tolist() == [True] * 3
    assert len(s) == 3


def test_keys_differing_in_one_half_are_different() -> None:
    s = IdSet()
    hi, lo = keys(0, 2)
    check(s, hi, lo, 10, NO_CUTOFF)
    other_lo = lo + np.uint64(1)
    assert check(s, hi, other_lo, 10, NO_CUTOFF).tolist() == [False, False]
    assert len(s) == 4


def test_growth_keeps_every_live_key() -> None:
    s = IdSet()
    first = s.capacity
    batches = [keys(k * 5000, 5000) for k in range(4)]
    for hi, lo in batches:
        assert not check(s, hi, lo, 10, NO_CUTOFF).any()
    assert s.capacity > first
    assert len(s) == 20_000
    for hi, lo in batches:
        assert check(s, hi, lo, 10, 10).all()


def test_compaction_keeps_keys_live_for_another_partition_with_keep_from() -> None:
    # 3,000 keys in bucket 10 (the table grows to 8,192 slots); then 6,000 keys of a
    # batch whose own cutoff is 15 (its partition is far ahead) pass the maximum load
    # and force a rebuild. With keep_from=5 (another partition still counts bucket 5 on) the
    # old keys survive it; without, they go, as only a cutoff of 11 or more allows.
    old_hi, old_lo = keys(0, 3000)
    new_hi, new_lo = keys(10_000, 6000)
    new_buckets = np.full(6000, 20, np.int32)
    new_cutoffs = np.full(6000, 15, np.int32)
    for keep_from, survivors in ((5, 3000), (None, 0)):
        s = IdSet()
        check(s, old_hi, old_lo, 10, NO_CUTOFF)
        assert s.capacity == 8_192
        s.check_and_add(new_hi, new_lo, new_buckets, new_cutoffs, keep_from)
        assert len(s) == 6000 + survivors
        assert int(check(s, old_hi, old_lo, 10, 5).sum()) == survivors


def test_keys_whose_words_look_like_nan_floats_are_kept_bit_for_bit() -> None:
    # Slots are moved as complex128 items: words that read as signalling or quiet NaNs
    # (or negative zero) must survive the copy unchanged, or a key would be lost.
    words = [0x7FF0_0000_0000_0001, 0x7FF4_0000_0000_0000, 0xFFF0_0000_0000_0001, 1 << 63]
    hi = np.array(words, dtype=np.uint64)
    lo = np.array(list(reversed(words)), dtype=np.uint64)
    s = IdSet()
    assert not check(s, hi, lo, 10, NO_CUTOFF).any()
    assert check(s, hi, lo, 10, 10).all()
    assert len(s) == 4
    grown = IdSet()
    check(grown, hi, lo, 10, NO_CUTOFF)
    more_hi, more_lo = keys(0, 5000)
    check(grown, more_hi, more_lo, 10, NO_CUTOFF)  # a rebuild moves every slot
    assert check(grown, hi, lo, 10, 10).all()


def test_a_set_filled_in_one_call_larger_than_a_probe_slice_is_exact() -> None:
    # More keys than one vectorized probe pass takes (they are probed in slices).
    hi, lo = keys(0, 600_000)
    s = IdSet()
    assert not check(s, hi, lo, 10, NO_CUTOFF).any()
    assert len(s) == 600_000
    seen = check(
        s,
        np.concatenate([hi[:5], hi[-5:] + np.uint64(1)]),
        np.concatenate([lo[:5], lo[-5:]]),
        10,
        10,
    )
    assert seen.tolist() == [True] * 5 + [False] * 5


def test_compaction_at_the_same_size_reuses_the_table() -> None:
    # 3,000 keys in bucket 10 fill 8,192 slots to 37 %; 3,000 more (bucket 20, cutoff
    # 15) would pass 70 %: the expired ones are dropped and the table is reused as is.
    s = IdSet()
    old_hi, old_lo = keys(0, 3000)
    check(s, old_hi, old_lo, 10, NO_CUTOFF)
    assert s.capacity == 8_192
    new_hi, new_lo = keys(10_000, 3000)
    assert not check(s, new_hi, new_lo, 20, 15).any()
    assert s.capacity == 8_192 and len(s) == 3000
    assert check(s, new_hi, new_lo, 20, 15).all()
    assert not check(s, old_hi, old_lo, 10, NO_CUTOFF).any()  # gone: new again
