"""Decode step, slow path: a chunk with bad records is decoded block by block, and a
record's fate never depends on its neighbours or on the block size."""

from __future__ import annotations

import polars as pl
import pytest

from adpulse.contracts import Reason, Stream
from adpulse.processor.steps import decode as decode_step
from adpulse.transport.base import Chunk
from adpulse.transport.framing import frame

N = 3000


def _record(i: int) -> bytes:
    return (
        b'{"ad_id": %d, "user_id": "U%d", "impression_timestamp": "2023-09-01 00:00:%02d",'
        b' "platform": "Web", "location": "Miami"}' % (1000 + i % 7, i, i % 60)
    )


def _chunk(payloads: list[bytes]) -> Chunk:
    return Chunk(Stream.IMPRESSIONS, 0, None, "end", frame(payloads), len(payloads))


OBJECT_USER = b'{"ad_id": 1, "user_id": {"id": 7}, "impression_timestamp": "2023-09-01 00:00:00"}'
ARRAY_PLATFORM = b'{"ad_id": 1, "user_id": "U1", "platform": ["Web"], "impression_timestamp": "x"}'
NOT_JSON = b'{"ad_id": 1, "user_id": '
WRONG_INT = b'{"ad_id": "seven", "user_id": "U1", "impression_timestamp": "2023-09-01 00:00:00"}'


@pytest.mark.parametrize("block", [16, 256, 1024, 100_000])
@pytest.mark.parametrize("with_invalid_json", [False, True])
def test_bad_records_are_the_same_whatever_the_block_and_neighbours(
    block: int, with_invalid_json: bool
) -> None:
    payloads = [_record(i) for i in range(N)]
    # Objects and arrays in string fields: the vectorized decoder alone would read them
    # as their JSON text when nothing else in the chunk fails.
    bad = {1500: OBJECT_USER, 2999: ARRAY_PLATFORM, 7: WRONG_INT}
    if with_invalid_json:
        bad[10] = NOT_JSON
    for row, payload in bad.items():
        payloads[row] = payload

    decoded = decode_step.decode(Stream.IMPRESSIONS, [_chunk(payloads)], block_records=block)

    reasons = {r.row: r.reason for r in decoded.rejects}
    expected = {1500: Reason.WRONG_TYPE, 2999: Reason.WRONG_TYPE, 7: Reason.WRONG_TYPE}
    if with_invalid_json:
        expected[10] = Reason.INVALID_JSON
    assert reasons == expected
    assert {r.row: r.payload for r in decoded.rejects} == bad
    rows = decoded.rows
    assert rows["_row"].to_list() == [i for i in range(N) if i not in bad]
    # Good records decode exactly as the fast path decodes them.
    clean = decode_step.decode(Stream.IMPRESSIONS, [_chunk([_record(i) for i in range(N)])])
    keep = [i for i in range(N) if i not in bad]
    assert rows.drop("_row").rows() == clean.rows.drop("_row")[keep].rows()


def test_a_string_that_merely_starts_with_a_brace_is_kept() -> None:
    payloads = [_record(i) for i in range(50)]
    payloads[3] = (
        b'{"ad_id": 1, "user_id": "{not-json", "impression_timestamp": "2023-09-01 00:00:00"}'
    )
    decoded = decode_step.decode(Stream.IMPRESSIONS, [_chunk(payloads)])
    assert decoded.rejects == []
    assert decoded.rows.filter(decoded.rows["_row"] == 3)["user_id"].to_list() == ["{not-json"]


def test_small_chunks_decoded_together_equal_each_chunk_decoded_alone() -> None:
    # A live batch's chunks are decoded in one call (decode.JOIN_MAX_BYTES): records
    # keep their row numbers, partitions and fates, suspect strings included.
    escaped_brace = (
        b'{"ad_id": 1, "user_id": "\\u007bU", "impression_timestamp": "2023-09-01 00:00:00"}'
    )
    nul = b'{"ad_id": 1, "user_id": "U\\u0000", "impression_timestamp": "2023-09-01 00:00:00"}'
    brace = b'{"ad_id": 1, "user_id": "{not-json", "impression_timestamp": "2023-09-01 00:00:00"}'
    per_partition = {
        0: [_record(0), escaped_brace, _record(1)],
        1: [],
        2: [_record(2), OBJECT_USER, _record(3), nul],
        3: [brace, ARRAY_PLATFORM],
    }
    chunks = [
        Chunk(Stream.IMPRESSIONS, p, None, "end", frame(rows), len(rows))
        for p, rows in per_partition.items()
    ]
    together = decode_step.decode(Stream.IMPRESSIONS, chunks)

    assert {r.row: r.reason for r in together.rejects} == {
        4: Reason.WRONG_TYPE,
        8: Reason.WRONG_TYPE,
    }
    rows = together.rows
    assert rows["_row"].to_list() == [0, 1, 2, 3, 5, 6, 7]
    assert rows["partition"].to_list() == [0, 0, 0, 2, 2, 2, 3]
    assert rows["user_id"].to_list() == ["U0", "{U", "U1", "U2", "U3", "U\x00", "{not-json"]
    assert together.may_hold_nul
    # Each chunk alone takes the chunk-by-chunk path: the same rows and rejects.
    alone = [decode_step.decode(Stream.IMPRESSIONS, [c]) for c in chunks]
    starts = [0, 3, 3, 7]
    assert rows.drop("_row").rows() == [r for a in alone for r in a.rows.drop("_row").rows()]
    assert [(r.row, r.reason, r.payload) for r in together.rejects] == [
        (r.row + start, r.reason, r.payload)
        for a, start in zip(alone, starts, strict=True)
        for r in a.rejects
    ]
    clean = decode_step.decode(Stream.IMPRESSIONS, [chunks[0]])
    assert not clean.may_hold_nul


@pytest.mark.parametrize(
    "suspect",
    [
        OBJECT_USER,
        b'{"ad_id": 1, "user_id": "U1", "platform":\t{"a": 1}, "impression_timestamp": "x"}',
        ARRAY_PLATFORM,
    ],
)
def test_an_object_or_array_in_a_string_field_of_joined_chunks_is_rejected(
    suspect: bytes,
) -> None:
    chunks = [
        Chunk(Stream.IMPRESSIONS, 0, None, "end", frame([_record(0)]), 1),
        Chunk(Stream.IMPRESSIONS, 1, None, "end", frame([_record(1), suspect]), 2),
    ]
    decoded = decode_step.decode(Stream.IMPRESSIONS, chunks)
    assert [(r.row, r.reason) for r in decoded.rejects] == [(2, Reason.WRONG_TYPE)]
    assert decoded.rows["_row"].to_list() == [0, 1]


#: Records the screen must flag or the decoder refuses, one of each way (the generator's
#: malformed kinds and the hostile ones), beside good records.
ODD_RECORDS: list[bytes] = [
    NOT_JSON,
    WRONG_INT,
    OBJECT_USER,
    ARRAY_PLATFORM,
    b"",
    b"   ",
    b'{"ad_id": 1, "user_id": "U\xff", "impression_timestamp": "2023-09-01 00:00:00"}',
    b"[1, 2]",
    b'"a string"',
    b'{"ad_id": true, "user_id": "U1", "impression_timestamp": "2023-09-01 00:00:00"}',
    b'{"ad_id": 18446744073709551615, "user_id": "U1", "impression_timestamp": "x"}',
    b'{"ad_id": 1.5, "user_id": "U1", "impression_timestamp": "2023-09-01 00:00:00"}',
    b'{"ad_id": 1, "user_id": "\\ud800", "impression_timestamp": "2023-09-01 00:00:00"}',
    b'{"ad_id": 1, "user_id": "U1",\n "impression_timestamp": "2023-09-01 00:00:00"}',
    b'{"ad_id": 1, "user_id": "{U1", "impression_timestamp": "2023-09-01 00:00:00"}',
]


def _decoded(payloads: list[bytes], screen: bool) -> tuple[list[tuple[object, ...]], list[object]]:
    decoded = decode_step.decode(Stream.IMPRESSIONS, [_chunk(payloads)], screen=screen)
    rows = decoded.rows.sort("_row").rows()
    return rows, sorted((r.row, r.reason, r.payload) for r in decoded.rejects)


def test_the_screen_gives_each_record_the_fate_the_blocks_give_it() -> None:
    payloads = [_record(i) for i in range(1000)]
    for n, odd in enumerate(ODD_RECORDS):
        payloads[37 * n + 5] = odd
    screened = _decoded(payloads, screen=True)
    assert screened == _decoded(payloads, screen=False)
    rows, rejects = screened
    assert len(rows) + len(rejects) == len(payloads)
    assert {reason for _, reason, _ in rejects} == {
        Reason.INVALID_JSON,
        Reason.WRONG_TYPE,
        Reason.EMPTY_PAYLOAD,
        Reason.INVALID_UTF8,
        Reason.NOT_AN_OBJECT,
        Reason.INVALID_CHARACTER,
    }
    kept = {row[0] for row in rows}
    assert 37 * 14 + 5 in kept and 37 * 13 + 5 in kept  # "{U1", and a line break: kept


def test_a_record_only_the_decoder_refuses_sends_the_chunk_to_the_blocks() -> None:
    # A member named twice: the screen (orjson) reads the last ad_id, 1, and lets it
    # through; the decoder reads the first, "x", and refuses the chunk's good lines.
    refused = b'{"ad_id": "x", "ad_id": 1, "user_id": "U1", "impression_timestamp": "x"}'
    payloads = [_record(i) for i in range(600)]
    payloads[300], payloads[400] = refused, NOT_JSON
    decoded = decode_step.decode(Stream.IMPRESSIONS, [_chunk(payloads)])
    assert [(r.row, r.reason) for r in decoded.rejects] == [
        (300, Reason.WRONG_TYPE),
        (400, Reason.INVALID_JSON),
    ]
    assert decoded.rows["_row"].to_list() == [i for i in range(600) if i not in (300, 400)]
    assert _decoded(payloads, screen=True) == _decoded(payloads, screen=False)


@pytest.mark.parametrize(
    "twice",
    [
        b'{"ad_id": "x", "ad_id": 1, "user_id": "U1", "impression_timestamp": "x"}',
        b'{"ad_id": 1, "ad_id": "x", "user_id": "U1", "impression_timestamp": "x"}',
        b'{"ad_id": 1, "user_id": "U1", "user_id": {"a": 1}, "impression_timestamp": "x"}',
        b'{"ad_id": 1, "user_id": "U1", "impression_timestamp": "x", "impression_timestamp": 5}',
    ],
)
def test_a_member_named_twice_has_one_fate_alone_or_beside_bad_records(twice: bytes) -> None:
    """The decoder reads a repeated member's first value; so do the per-record checks."""
    alone = [_record(i) for i in range(20)]
    alone[10] = twice
    beside = [*alone, NOT_JSON]
    fates = []
    for payloads, screen in ((alone, True), (beside, True), (beside, False)):
        decoded = decode_step.decode(Stream.IMPRESSIONS, [_chunk(payloads)], screen=screen)
        kept = decoded.rows.filter(pl.col("_row") == 10).drop("_row", "partition").rows()
        fates.append((kept, [r.reason for r in decoded.rejects if r.row == 10]))
    assert fates[0] == fates[1] == fates[2]
    first_is_good = not twice.startswith(b'{"ad_id": "x"')
    assert (fates[0][0] != []) is first_is_good
