"""Framing of payloads as log lines, and the partitioning function."""

from __future__ import annotations

import base64

import numpy as np
import orjson
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adpulse.contracts import DEFAULT_MAX_RECORD_BYTES
from adpulse.transport.framing import (
    OVERSIZE_KEEP_BYTES,
    frame,
    frame_by_partition,
    frame_one,
    partition_of,
    partitions_of,
    partitions_of_records,
    split_lines,
    unframe_line,
    user_id_keys,
    user_id_of,
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


# --- reading the user ids of a batch without decoding each record ------------------------
def _old_user_id(payload: bytes) -> str | None:
    """The producer's rule before the vectorized reading (orjson, record by record),
    copied here as the reference the new reading must equal."""
    try:
        record = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    value = record.get("user_id")
    if isinstance(value, str):
        return None if value.startswith(("{", "[")) else value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


VALID_TRICKY = [
    b'{"ad_id": 1, "user_id": "u1", "platform": "web"}',
    b'{"ad_id": 2}',
    b'{"user_id": null}',
    b'{"user_id": 9101}',
    b'{"user_id": -7}',
    b'{"user_id": 1.5}',
    b'{"user_id": 1.0}',
    b'{"user_id": 1e2}',
    b'{"user_id": 2.5E-3}',
    b'{"user_id": 18446744073709551616}',
    b'{"user_id": true}',
    b'{"user_id": false}',
    b'{"user_id": {"id": "U5678"}}',
    b'{"user_id": ["u1"]}',
    b'{"user_id": "{not an object"}',
    b'{"user_id": "[u1"}',
    b'{"user_id": ""}',
    b'{"user_id": " u1 "}',
    '{"user_id": "üser-é-日本-😀"}'.encode(),
    b'{"user_id": "u\\"1"}',
    b'{"user_id": "\\u00e9t\\u00e9"}',
    b'{"user_id": "a\\\\b"}',
    b'{"user_id": "\\ud83d\\ude00"}',
    b'{"user_id": "\\u007b"}',
    b'{"meta": {"user_id": "nested"}}',
    b'{"meta": {"user_id": "nested"}, "user_id": "top"}',
    b'{"user_id": "top", "meta": {"user_id": "nested"}}',
    b'{"user_id": "first", "user_id": "last"}',
    b'{"note": "\\"user_id\\": \\"z\\"", "user_id": "real"}',
    b'{"note": "5e123, 1e400 ", "user_id": "looks-huge"}',
    b'{"a": [1, {"user_id": "in-array"}], "b": -0.0, "c": 1e-5}',
    b'  {"user_id": "spaces"}  ',
    b'{"a": 1,\r"user_id": "cr-inside"}',
    b'{"a": "\\u0000", "user_id": "nul-escape"}',
    b'{"a": ' + b"[" * 600 + b"]" * 600 + b', "user_id": "deep"}',
]
INVALID_TRICKY = [
    b'{"user_id": "u1",',
    b'{"user_id": "u1"} trailing',
    b'{"user_id": "u1"}{"user_id": "u2"}',
    b"not json",
    b'["u1"]',
    b'"u1"',
    b"5",
    b"",
    b"   ",
    b"\xff",
    b'{"a": "\xff", "user_id": "bad-utf8-elsewhere"}',
    b'{"user_id": "\xed\xa0\x80"}',
    b'\xef\xbb\xbf{"user_id": "bom"}',
    b'{"a": 1e400, "user_id": "overflow"}',
    b'{"a": -1E+999, "user_id": "overflow"}',
    b'{"a": ' + b"9" * 400 + b', "user_id": "400-digits"}',
    b'{"a": NaN, "user_id": "nan"}',
    b'{"a": 01, "user_id": "leading-zero"}',
    b'{"a": "\x01", "user_id": "control"}',
    b'{"a": "\\ud800", "user_id": "lone-surrogate"}',
    b'{"user_id": "u1",}',
    b'{"a": ' + b"[" * 1100 + b"]" * 1100 + b', "user_id": "too-deep"}',
    b'{"user_id": "two"}\n{"user_id": "lines"}',
]


def _expected(payloads: list[bytes], partitions: int) -> list[int]:
    return [partition_of(_old_user_id(p), partitions) for p in payloads]


@pytest.mark.parametrize("partitions", [1, 4, 7, 16])
def test_partitions_of_records_equals_the_old_reading_on_tricky_records(partitions: int) -> None:
    assert all(_old_user_id(p) is None for p in INVALID_TRICKY[:12])
    everything = VALID_TRICKY + INVALID_TRICKY
    # The whole batch (broken: read record by record), each valid record alone, the
    # valid ones as one batch (the one-call path, escapes included), and the valid
    # ones without escapes (the inline path).
    batches = [everything, VALID_TRICKY, [p for p in VALID_TRICKY if b"\\" not in p]]
    batches += [[p] for p in everything]
    for batch in batches:
        got = partitions_of_records(batch, partitions)
        assert got.dtype == np.int64
        assert got.tolist() == _expected(batch, partitions), batch
    assert user_id_keys(everything) == [
        None if (u := _old_user_id(p)) is None else u.encode() for p in everything
    ]
    assert [user_id_of(p) for p in everything] == [_old_user_id(p) for p in everything]


def test_partitions_of_records_reads_what_it_must_read() -> None:
    """Exact ids, so the reference above cannot be wrong in the same way."""
    keys = user_id_keys(VALID_TRICKY[:28])
    assert keys[:12] == [b"u1", None, None, b"9101", b"-7", b"1.5", b"1", b"100",
                         b"0.0025", b"18446744073709551616", b"true", b"false"]  # fmt: skip
    assert keys[12:] == [None, None, None, None, b"", b" u1 ",
                         "üser-é-日本-😀".encode(), b'u"1', "été".encode(), b"a\\b",
                         "😀".encode(), None, None, b"top", b"top", b"last"]  # fmt: skip
    assert user_id_keys(INVALID_TRICKY) == [None] * len(INVALID_TRICKY)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.builds(
                lambda doc, cut: orjson.dumps(doc)[: cut or None],
                st.dictionaries(
                    st.sampled_from(["user_id", "ad_id", "u", "meta"]),
                    st.recursive(
                        st.none()
                        | st.booleans()
                        | st.integers(min_value=-(2**63), max_value=2**64 - 1)
                        | st.floats(allow_nan=False, allow_infinity=False)
                        | st.text(max_size=8),
                        lambda inner: (
                            st.lists(inner, max_size=3)
                            | st.dictionaries(st.sampled_from(["user_id", "x"]), inner, max_size=2)
                        ),
                        max_leaves=6,
                    ),
                    max_size=4,
                ),
                st.integers(min_value=-3, max_value=0),
            ),
            st.binary(max_size=12),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_partitions_of_records_equals_the_old_reading_on_generated_records(
    payloads: list[bytes],
) -> None:
    assert partitions_of_records(payloads, 7).tolist() == _expected(payloads, 7)


def test_records_nested_deeper_than_msgspec_reads_are_read_by_the_reference() -> None:
    record = b'{"a": ' + b"[" * 1010 + b"]" * 1010 + b', "user_id": "deep"}'
    assert user_id_keys([record, b'{"user_id": "u1"}']) == [b"deep", b"u1"]


@pytest.mark.parametrize("every", [1, 37, 500, 5000])
def test_long_batches_with_tricky_records_among_plain_ones_read_like_the_reference(
    every: int,
) -> None:
    """Batches longer than a block and than the vectorized hash's threshold: plain
    records read in one call, with the tricky ones (malformed, blank, escaped, numeric
    ids, line breaks) spread among them, each of which splits or breaks that call."""
    tricky = VALID_TRICKY + INVALID_TRICKY
    plain = [b'{"event_id": "e%d", "user_id": "U%d", "n": 1.5}' % (i, i % 997) for i in range(9000)]
    batch: list[bytes] = []
    for i, record in enumerate(plain):
        batch.append(record)
        if i % every == every - 1:
            batch.append(tricky[(i // every) % len(tricky)])
    for partitions in (4, 7):
        got = partitions_of_records(batch, partitions)
        assert got.tolist() == _expected(batch, partitions)
    # Without the records that break a whole chunk's checks (line breaks, \r, bad
    # UTF-8, huge numbers), so that the split at a failing record is what runs.
    whole = [p for p in batch if not _breaks_a_whole_chunk(p)]
    if every <= 37:  # the batch holds every tricky record, the malformed ones among them
        assert len(set(whole) & set(INVALID_TRICKY)) > 5
    assert partitions_of_records(whole, 7).tolist() == _expected(whole, 7)
    assert user_id_keys(whole) == [
        None if (u := _old_user_id(p)) is None else u.encode() for p in whole
    ]
    # Without escapes: read as text in one call, or (a number, an object, a malformed
    # record among them) as raw JSON.
    unescaped = [p for p in whole if b"\\" not in p]
    assert partitions_of_records(unescaped, 7).tolist() == _expected(unescaped, 7)
    ids_as_text = [
        p
        for p in unescaped
        if (d := _loads_or_none(p)) is not None
        and isinstance(d, dict)
        and (d.get("user_id") is None or isinstance(d.get("user_id"), str))
    ]
    assert len(ids_as_text) >= len(plain)
    assert partitions_of_records(ids_as_text, 7).tolist() == _expected(ids_as_text, 7)


def _breaks_a_whole_chunk(payload: bytes) -> bool:
    try:
        payload.decode()
    except UnicodeDecodeError:
        return True
    return any(part in payload for part in (b"\n", b"\r", b"1e400", b"5e123", b"E+999", b"9" * 300))


def _loads_or_none(payload: bytes) -> object:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None


def test_a_long_number_with_a_short_exponent_that_overflows_is_read_by_the_reference() -> None:
    """298 digits and ``e99`` overflow a double (orjson refuses the record) though no
    run of 300 digits or exponent of 3 characters shows it."""
    record = b'{"a": 1' + b"0" * 297 + b'e99, "user_id": "x"}'
    assert _old_user_id(record) is None
    assert user_id_keys([record]) == [None]
    batch = [record] + [b'{"user_id": "U%d"}' % i for i in range(5000)]
    assert partitions_of_records(batch, 7).tolist() == _expected(batch, 7)
