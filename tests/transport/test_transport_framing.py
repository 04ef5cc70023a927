"""Framing of payloads as log lines, and the partitioning function."""

from __future__ import annotations

import base64

import numpy as np
import polars as pl
import pytest

from adpulse.contracts import DEFAULT_MAX_RECORD_BYTES
from adpulse.transport.framing import (
    OVERSIZE_KEEP_BYTES,
    frame,
    frame_by_partition,
    frame_one,
    partition_of,
    partitions_of,
    split_lines,
    unframe_line,
)


def test_plain_json_is_stored_as_is() -> None:
    payload = b'{"ad_id": 7, "user_id": "u1"}'
    assert frame_one(payload) == payload + b"\n"
    assert unframe_line(payload) == (payload, None)


@pytest.mark.parametrize(
    ("payload", "framed"),
    [
        (b"", b"\x00Ag==\n"),
        (b"a\nb", b"\x00AmEKYg==\n"),
        (b"a\r\nb", b"\x00" + base64.b64encode(b"\x02a\r\nb") + b"\n"),
        (b"\x00x", b"\x00AgB4\n"),
        (b"\x00", b"\x00AgA=\n"),
    ],
    ids=["empty", "newline", "crlf", "escape-byte-first", "escape-byte-only"],
)
def test_escaped_payloads_round_trip(payload: bytes, framed: bytes) -> None:
    assert frame_one(payload) == framed
    assert framed.count(b"\n") == 1
    assert unframe_line(framed[:-1]) == (payload, None)


def test_oversized_payload_keeps_its_head_and_size() -> None:
    payload = bytes(range(256)) * 300  # 76,800 bytes > 64 KiB
    line = frame_one(payload)
    assert line[:1] == b"\x00"
    assert line.count(b"\n") == 1
    assert unframe_line(line[:-1]) == (payload[:OVERSIZE_KEEP_BYTES], 76_800)


def test_record_limit_is_inclusive() -> None:
    at_limit = b"x" * DEFAULT_MAX_RECORD_BYTES
    assert frame_one(at_limit) == at_limit + b"\n"
    small_limit = frame_one(b'{"abcdefgh":1}', max_record_bytes=10)
    assert unframe_line(small_limit[:-1]) == (b'{"abcdefgh":1}', 14)


def test_frame_and_split_lines_round_trip() -> None:
    payloads = [b'{"a":1}', b"", b"x\ny", b"\x00z", b"q" * 70_000, b'{"b":2}']
    data = frame(payloads)
    assert data == b"".join(frame_one(p) for p in payloads)
    lines = split_lines(data)
    assert len(lines) == 6
    decoded = [unframe_line(line) for line in lines]
    assert decoded == [
        (b'{"a":1}', None),
        (b"", None),
        (b"x\ny", None),
        (b"\x00z", None),
        (b"q" * OVERSIZE_KEEP_BYTES, 70_000),
        (b'{"b":2}', None),
    ]
    assert split_lines(b"") == []


# These values are part of the on-disk format: changing the function re-partitions
# every existing log, so a user's clicks and conversions would no longer meet.
@pytest.mark.parametrize(
    ("user_id", "partitions", "expected"),
    [
        ("user_1", 8, 2),
        ("user_2", 8, 6),
        ("u-42", 8, 3),
        ("", 8, 1),
        ("user_1", 1024, 130),
        (None, 8, 0),
        ("user_1", 1, 0),
    ],
)
def test_partition_of_is_stable(user_id: str | None, partitions: int, expected: int) -> None:
    assert partition_of(user_id, partitions) == expected


@pytest.mark.parametrize("partitions", [1, 2, 3, 7, 16, 64, 1000, 1024])
def test_partitions_of_equals_partition_of(partitions: int) -> None:
    user_ids: list[str | None] = [f"user_{i}" for i in range(5000)]
    user_ids += [None, "", "é日本語", "user with spaces", "x" * 1000, "0", "-1"]
    vectorized = partitions_of(pl.Series(user_ids, dtype=pl.String), partitions)
    scalar = np.array([partition_of(u, partitions) for u in user_ids], dtype=np.int64)
    assert vectorized.dtype == np.int64
    assert vectorized.tolist() == scalar.tolist()
    if partitions <= 64:
        # Every partition gets records (a broken hash often maps everything to one).
        assert set(scalar.tolist()) == set(range(partitions))


@pytest.mark.parametrize("records", [10, 5000])  # scalar and vectorized hashing paths
def test_frame_by_partition_groups_in_order(records: int) -> None:
    keys: list[str | None] = [None if i % 11 == 0 else f"user_{i % 97}" for i in range(records)]
    payloads = [b'{"i":%d}' % i if i % 13 else b"bad\nline" for i in range(records)]
    groups = frame_by_partition(payloads, keys, 5)

    expected: dict[int, list[bytes]] = {}
    for payload, key in zip(payloads, keys, strict=True):
        expected.setdefault(partition_of(key, 5), []).append(frame_one(payload))
    assert sorted(groups) == sorted(expected)
    for partition, lines in expected.items():
        assert groups[partition] == (b"".join(lines), len(lines))
    assert sum(count for _, count in groups.values()) == records


def test_frame_by_partition_single_partition_and_errors() -> None:
    assert frame_by_partition([b"a", b"b"], ["x", None], 1) == {0: (b"a\nb\n", 2)}
    assert frame_by_partition([], [], 4) == {}
    with pytest.raises(ValueError, match="2 payloads but 1 keys"):
        frame_by_partition([b"a", b"b"], ["x"], 4)
