"""Framing of record payloads as log lines, and the partitioning function.

A payload that is a plain one-line JSON object is stored as is, followed by ``\\n``:
a chunk of such lines *is* NDJSON, so the processor decodes it in one vectorized call.
A payload that cannot be stored that way (empty, containing a line break, larger than
the record limit, or starting with the escape byte) is stored *escaped*: the escape byte
``\\x00`` followed by its base64. JSON never starts with ``\\x00``, so an escaped line
always fails the fast decode and takes the per-record path, which unescapes it and
validates it (it usually becomes a dead letter with a specific reason).

Damage: the framing has no checksums (a chunk must stay plain NDJSON), so what it can
tell is a line no writer produces: an empty line, or an escaped line that is not valid
base64 of a known marker. :func:`unframe_line` raises :class:`DamagedRecordError` for
those (the processor dead-letters them as ``damaged_record``). ``adpulse log repair``
fills bytes lost inside a log with one escaped *lost-bytes* line of the same length
(:func:`lost_bytes_line`), which unframes to the same error, saying how many were lost.

Partitioning: ``xxh64(user_id) % partitions``, stable across processes, hosts and
languages. Records without a readable user id go to partition 0. :func:`user_id_of`
reads one record's id (orjson, the reference); :func:`partitions_of_records` reads a
batch's with one msgspec call for the whole batch that skips everything but the id,
with results identical to the reference record by record (see there).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence
from typing import Final

import msgspec
import numpy as np
import orjson
import polars as pl
import polars_hash as plh
import xxhash

from adpulse.contracts import DEFAULT_MAX_RECORD_BYTES, PARTITION_KEY

ESCAPE = 0x00
_ESCAPE_BYTE = b"\x00"
#: An oversized payload is kept (escaped) up to this many bytes, for the dead letter.
OVERSIZE_KEEP_BYTES = 4096
_OVERSIZE_MARK = b"\x01"
_PAYLOAD_MARK = b"\x02"
_LOST_MARK = b"\x03"
#: The shortest lost-bytes line: escape byte, 12 base64 characters, line end.
LOST_LINE_MIN_BYTES = 14


class DamagedRecordError(ValueError):
    """A stored line that no writer produces: the log was damaged there.

    ``lost_bytes`` is set for the line ``adpulse log repair`` put in place of lost bytes.
    """

    def __init__(self, message: str, lost_bytes: int | None = None) -> None:
        super().__init__(message)
        self.lost_bytes = lost_bytes


def needs_escape(payload: bytes, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> bool:
    return (
        not payload
        or len(payload) > max_record_bytes
        or payload[0] == ESCAPE
        or b"\n" in payload
        or b"\r" in payload
    )


def frame_one(payload: bytes, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> bytes:
    """Frame one payload as a log line (with its trailing ``\\n``)."""
    if not needs_escape(payload, max_record_bytes):
        return payload + b"\n"
    if len(payload) > max_record_bytes:
        # Keep the head only and mark it: the processor dead-letters it as too large.
        head = _OVERSIZE_MARK + len(payload).to_bytes(8, "big") + payload[:OVERSIZE_KEEP_BYTES]
        return _ESCAPE_BYTE + base64.b64encode(head) + b"\n"
    return _ESCAPE_BYTE + base64.b64encode(_PAYLOAD_MARK + payload) + b"\n"


def frame(payloads: Iterable[bytes], max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> bytes:
    """Frame many payloads into one buffer of log lines."""
    return b"".join(frame_one(p, max_record_bytes) for p in payloads)


def unframe_line(line: bytes) -> tuple[bytes, int | None]:
    """Undo :func:`frame_one` for one line (without its ``\\n``).

    Returns ``(payload, original_size)``; ``original_size`` is set only for a payload
    that was too large and of which just the head was kept. Raises
    :class:`DamagedRecordError` for a line that no writer produces (see the module docs).
    """
    if not line:
        raise DamagedRecordError("an empty line: writers never store one")
    if line[0] != ESCAPE:
        return line, None
    try:
        # Strict: writers store exact base64 (a lost-bytes line pads with spaces).
        raw = base64.b64decode(line[1:].rstrip(b" "), validate=True)
    except ValueError:
        raise DamagedRecordError(
            f"an escaped line of {len(line)} bytes that is not valid base64"
        ) from None
    marker = raw[:1]
    if marker == _PAYLOAD_MARK:
        return raw[1:], None
    if marker == _OVERSIZE_MARK and len(raw) >= 9:
        return raw[9:], int.from_bytes(raw[1:9], "big")
    if marker == _LOST_MARK and len(raw) == 9:
        lost = int.from_bytes(raw[1:9], "big")
        raise DamagedRecordError(
            f"{lost} bytes of the log were lost here (filled by `adpulse log repair`)", lost
        )
    raise DamagedRecordError(f"an escaped line of {len(line)} bytes with an unknown marker")


def lost_bytes_line(length: int, lost: int) -> bytes:
    """A line of exactly ``length`` bytes (at least :data:`LOST_LINE_MIN_BYTES`) that
    stands for ``lost`` bytes of damaged log (see the module docs)."""
    if length < LOST_LINE_MIN_BYTES:
        raise ValueError(f"a lost-bytes line needs {LOST_LINE_MIN_BYTES} bytes, not {length}")
    body = base64.b64encode(_LOST_MARK + lost.to_bytes(8, "big"))
    return _ESCAPE_BYTE + body + b" " * (length - 2 - len(body)) + b"\n"


#: Below this many bytes, ``bytes.count`` is the quicker count of line ends.
_COUNT_MIN_BYTES: Final = 64 * 1024
#: Block size of count_lines (its temporary stays in cache).
_COUNT_BLOCK_BYTES: Final = 1024 * 1024


def count_lines(data: bytes) -> int:
    """Number of ``\\n`` in ``data``; NumPy in cache-sized blocks is ~3x ``bytes.count``."""
    if len(data) < _COUNT_MIN_BYTES:
        return data.count(b"\n")
    view = np.frombuffer(data, dtype=np.uint8)
    return sum(
        int(np.count_nonzero(view[start : start + _COUNT_BLOCK_BYTES] == 0x0A))
        for start in range(0, len(view), _COUNT_BLOCK_BYTES)
    )


def split_lines(data: bytes) -> list[bytes]:
    """Split a chunk of framed lines into lines (without terminators)."""
    if not data:
        return []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def partition_of(user_id: str | None, partitions: int) -> int:
    """The partition of one record."""
    if user_id is None or partitions <= 1:
        return 0
    return xxhash.xxh64_intdigest(user_id.encode()) % partitions


def partitions_of(user_ids: pl.Series, partitions: int) -> np.ndarray:
    """Vectorized :func:`partition_of` (identical results) for a column of user ids."""
    if partitions <= 1:
        return np.zeros(len(user_ids), dtype=np.int64)
    hashed = pl.DataFrame({"u": user_ids}).select(
        (plh.col("u").nchash.xxhash64() % partitions).fill_null(0).cast(pl.Int64)
    )
    return hashed.to_series().to_numpy()


def user_id_of(payload: bytes) -> str | None:
    """The ``user_id`` a record is partitioned by, as text; None when unreadable.

    None for malformed JSON (or invalid UTF-8), a record that is not an object, a
    missing or null id, and an object or array (a wrong type; so is a string that
    starts like one, which the processor rejects as such). A number or a boolean reads
    as the processor's decoder reads it: ``9101``, ``1.5``, ``true``.
    """
    try:
        record = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    return _text_of(record.get(PARTITION_KEY))


def _text_of(value: object) -> str | None:
    if isinstance(value, str):
        return None if value.startswith(("{", "[")) else value
    if isinstance(value, bool):  # before int: a bool is an int in Python
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


class _Head(msgspec.Struct):
    """A record's ``user_id`` as raw JSON (empty when missing); other fields are checked
    for validity and skipped."""

    key: msgspec.Raw = msgspec.field(default=msgspec.Raw(b""), name=PARTITION_KEY)


_HEAD = msgspec.json.Decoder(_Head)
#: The shape of numbers, for :func:`_maybe_huge_number`: digits, ".", "+" and "-" ->
#: "0", "E" -> "e", and what may end a number (``}]``, whitespace) -> ",".
_NUMBER_SHAPE = bytes.maketrans(b"0123456789.+-E}] \t\r\n", b"0000000000000e,,,,,,")
#: 200 digits in a row: a number that may overflow a double (or a string: no matter).
#: With an exponent of at most 2 characters (the longer ones are looked for apart), a
#: number overflows only from ~210 digits before its point (``1`` + 297 zeros + ``e99``).
_LONG_DIGITS = b"0" * 200


def _maybe_huge_number(data: bytes) -> bool:
    """Whether ``data`` may hold a number that overflows a double (``1e400``, or 400
    digits): orjson refuses those, msgspec reads infinity. Safe rather than exact: any
    exponent of 3 characters or more (sign included) that ends like a number, or 200
    digits in a row; what only looks like one (in a string) just takes the slow way."""
    shape = data.translate(_NUMBER_SHAPE)
    if _LONG_DIGITS in shape:
        return True
    at = shape.find(b"0e000")
    while at >= 0:
        end = at + 5
        while end < len(shape) and shape[end] == 0x30:
            end += 1
        if end == len(shape) or shape[end] == 0x2C:
            return True
        at = shape.find(b"0e000", end)
    return False


_OPENERS = (b"{", b"[")


def partitions_of_records(
    payloads: Sequence[bytes], partitions: int, joined: bytes | None = None
) -> np.ndarray:
    """The partition of each record's ``user_id``: identical, record by record, to
    ``partition_of(user_id_of(payload), partitions)``, without decoding each record.

    The records are decoded by one msgspec call (``decode_lines``) into each record's
    ``user_id`` as raw JSON, everything else validated and skipped (see :func:`_raw_ids`
    for what breaks the one call); a string id without escapes is hashed as it stands in
    the record (its bytes are its UTF-8). msgspec takes only what orjson takes once three
    differences are kept away: invalid UTF-8 (checked first), numbers that overflow a
    double (looked for), and ``\\r`` (a line break for ``decode_lines``). Records the one
    call cannot read (a malformed record, a blank line) are read one by one with orjson,
    the reference. ``joined``, if given, must be ``b"\\n".join(payloads)``.
    """
    if partitions <= 1 or not payloads:
        return np.zeros(len(payloads), dtype=np.int64)
    if joined is None:
        joined = b"\n".join(payloads)
    if len(payloads) >= _VECTORIZE_MIN_RECORDS and b"\\" not in joined:
        texts = _text_ids(payloads, joined)
        if texts is not None:
            return _partitions_of_texts(texts, partitions)
    raws = _raw_ids(payloads, joined)
    if len(raws) >= _VECTORIZE_MIN_RECORDS:
        return _partitions_of_raw_ids(raws, payloads, partitions)
    # The common case, inline: a string id without escapes is its own UTF-8 bytes.
    xxh = xxhash.xxh64_intdigest
    return np.array(
        [
            xxh(r[1:-1]) % partitions
            if r is not None and r[:1] == b'"' and r[1:2] not in _OPENERS and b"\\" not in r
            else partition_of_key(_key_of(r, p), partitions)
            for r, p in zip(raws, payloads, strict=True)
        ],
        dtype=np.int64,
    )


class _HeadText(msgspec.Struct, gc=False):
    """A record's ``user_id`` when it is a string or null (None when missing)."""

    key: str | None = msgspec.field(default=None, name=PARTITION_KEY)


_HEAD_TEXT = msgspec.json.Decoder(_HeadText)


def _text_ids(payloads: Sequence[bytes], joined: bytes) -> list[str | None] | None:
    """Every record's ``user_id`` as text (None: missing or null) in one msgspec call,
    for records without escapes (no ``\\`` in ``joined``): a string id is then its
    bytes as they stand, which is what :func:`_raw_ids` would give with its quotes.
    None when the one call cannot read them all (then :func:`_raw_ids` does)."""
    if not _one_call_may_read(payloads, joined):
        return None
    try:
        heads = _HEAD_TEXT.decode_lines(joined)
    except (msgspec.DecodeError, RecursionError):  # ValidationError: a non-string id
        return None
    if len(heads) != len(payloads):
        return None
    return [h.key for h in heads]


def _partitions_of_texts(texts: list[str | None], partitions: int) -> np.ndarray:
    """:func:`partition_of` of each id in one Polars pass; an id that starts like an
    object or an array reads as none (see :func:`user_id_of`), as does a missing one."""
    key = pl.col("k")
    frame = (
        pl.DataFrame([pl.Series("k", texts, dtype=pl.String)])
        .select(
            pl.when(key.str.starts_with("{") | key.str.starts_with("["))
            .then(None)
            .otherwise(key)
            .alias("k")
        )
        .select((plh.col("k").nchash.xxhash64() % partitions).fill_null(0).cast(pl.Int64))
    )
    return frame.to_series().to_numpy()


def _partitions_of_raw_ids(
    raws: list[bytes | None], payloads: Sequence[bytes], partitions: int
) -> np.ndarray:
    """The inline case of :func:`partitions_of_records` in one Polars pass: a raw id
    that is a string without escapes (and not starting like an object or array) is
    hashed without its quotes; the others take the per-record way. Every raw id given
    came from a block checked to be UTF-8, so the cast to text cannot fail."""
    raw = pl.col("r")
    frame = (
        pl.DataFrame([pl.Series("r", raws, dtype=pl.Binary)])
        .select(
            plain=(
                raw.bin.starts_with(b'"')
                & ~raw.bin.contains(b"\\")
                & ~raw.bin.starts_with(b'"{')
                & ~raw.bin.starts_with(b'"[')
            ).fill_null(False),
            key=raw.cast(pl.String).str.slice(1).str.head(-1),
        )
        .with_columns(
            part=(plh.col("key").nchash.xxhash64() % partitions).fill_null(0).cast(pl.Int64)
        )
    )
    parts = frame["part"].to_numpy().copy()
    for i in np.flatnonzero(~frame["plain"].to_numpy()).tolist():
        parts[i] = partition_of_key(_key_of(raws[i], payloads[i]), partitions)
    return parts


def partition_of_key(key: bytes | None, partitions: int) -> int:
    """:func:`partition_of` for a user id already UTF-8 encoded (None: partition 0)."""
    if key is None or partitions <= 1:
        return 0
    return xxhash.xxh64_intdigest(key) % partitions


def user_id_keys(payloads: Sequence[bytes], joined: bytes | None = None) -> list[bytes | None]:
    """Each record's :func:`user_id_of`, UTF-8 encoded (the bytes its partition hashes),
    read as :func:`partitions_of_records` reads them."""
    if joined is None:
        joined = b"\n".join(payloads)
    raws = _raw_ids(payloads, joined)
    return [_key_of(r, p) for r, p in zip(raws, payloads, strict=True)]


#: Records decoded per msgspec call once a span of records broke the one call and its
#: records are read in blocks: a malformed record sends its block's records the slow way
#: (orjson, one by one), so blocks are small; the call itself costs ~1 µs.
ID_BLOCK_RECORDS: Final = 32
#: The position msgspec gives for a decode error: a byte of the input, or a line's value.
_ERROR_BYTE = re.compile(r"\(byte (\d+)\)")
_ERROR_VALUE = re.compile(r"`\$\[(\d+)\]")


def _raw_ids(payloads: Sequence[bytes], joined: bytes) -> list[bytes | None]:
    """Each record's ``user_id`` as raw JSON (``b""`` when missing), or None for a
    record to read with the reference (orjson).

    One msgspec call for all the records. When it fails, the error's position splits the
    records there: those before it and those from it on are each read the same way, so a
    few malformed records cost a few more calls, not a call per block. What the one call
    cannot take as a whole (a payload holding a line break, ``\\r``, invalid UTF-8, a
    number that may overflow, blank lines) is read in blocks of
    :data:`ID_BLOCK_RECORDS`. Any record may safely be left to the reference: it is the
    definition of the result, only slower.
    """
    raws: list[bytes | None] = []
    spans = [(0, len(payloads), joined)]
    while spans:
        lo, hi, data = spans.pop()
        block = payloads[lo:hi]
        if hi - lo <= ID_BLOCK_RECORDS:
            raws += _raw_ids_of_block(block, data)
            continue
        if not _one_call_may_read(block, data):
            for at in range(lo, hi, ID_BLOCK_RECORDS):
                part = payloads[at : min(hi, at + ID_BLOCK_RECORDS)]
                raws += _raw_ids_of_block(part, b"\n".join(part))
            continue
        try:
            heads = _HEAD.decode_lines(data)
        except (msgspec.DecodeError, RecursionError) as error:
            line = _error_line(error, data)
        else:
            if len(heads) == hi - lo:
                raws += [bytes(h.key) for h in heads]
                continue
            line = None  # blank lines (skipped by decode_lines): the count tells
        if line is None:
            for at in range(lo, hi, ID_BLOCK_RECORDS):
                part = payloads[at : min(hi, at + ID_BLOCK_RECORDS)]
                raws += _raw_ids_of_block(part, b"\n".join(part))
            continue
        # Split at the failing record; the spans are taken back in order (a stack).
        cut = lo + min(max(1, line), hi - lo - 1)
        spans.append((cut, hi, b"\n".join(payloads[cut:hi])))
        spans.append((lo, cut, b"\n".join(payloads[lo:cut])))
    return raws


def _error_line(error: Exception, data: bytes) -> int | None:
    """The line of ``data`` where msgspec's ``decode_lines`` failed (the value it was
    reading may have started on an earlier line: JSON whitespace includes line breaks),
    or None when the error does not say."""
    message = str(error)
    if match := _ERROR_BYTE.search(message):
        return data.count(b"\n", 0, int(match.group(1)))
    if match := _ERROR_VALUE.search(message):
        return int(match.group(1))
    return None


def _one_call_may_read(payloads: Sequence[bytes], joined: bytes) -> bool:
    return (
        count_lines(joined) == len(payloads) - 1  # no payload holds a line break
        and b"\r" not in joined
        and _utf8(joined)
        and not _maybe_huge_number(joined)
    )


def _raw_ids_of_block(payloads: Sequence[bytes], joined: bytes) -> list[bytes | None]:
    if _one_call_may_read(payloads, joined):
        try:
            heads = _HEAD.decode_lines(joined)
        except (msgspec.DecodeError, RecursionError):
            heads = []
        # decode_lines skips blank lines: then the count tells, and each is read alone.
        if len(heads) == len(payloads):
            return [bytes(h.key) for h in heads]
    return [None] * len(payloads)


def _utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _key_of(raw: bytes | None, payload: bytes) -> bytes | None:
    """The key of a record from its id's raw JSON (``b""``: missing; None: read the
    record with the reference, orjson)."""
    if raw is None:
        decoded = user_id_of(payload)
    elif not raw:
        return None
    elif raw[0] == 0x22 and b"\\" not in raw:  # a string without escapes: its own bytes
        text = raw[1:-1]
        return None if text[:1] in _OPENERS else text
    else:
        try:
            decoded = _text_of(orjson.loads(raw))
        except orjson.JSONDecodeError:  # msgspec took what orjson does not: the reference
            decoded = user_id_of(payload)
    return None if decoded is None else decoded.encode()


#: Below this many records, hashing key by key beats building a Polars column (measured).
_VECTORIZE_MIN_RECORDS = 4096


def frame_by_partition(
    payloads: Sequence[bytes],
    keys: Sequence[str | None],
    partitions: int,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> dict[int, tuple[bytes, int]]:
    """Frame payloads and group them by the partition of their key.

    Returns ``{partition: (framed_lines, record_count)}``; within a partition the records
    keep the order of ``payloads``. Every producer's ``send`` uses this, so all transports
    partition identically.
    """
    if len(payloads) != len(keys):
        raise ValueError(
            f"send() got {len(payloads)} payloads but {len(keys)} keys; "
            "pass one key (the record's user_id, or None) per payload"
        )
    if partitions <= 1:
        parts: list[int] = [0] * len(keys)
    elif len(keys) >= _VECTORIZE_MIN_RECORDS:
        parts = partitions_of(pl.Series(keys, dtype=pl.String), partitions).tolist()
    else:
        parts = [partition_of(key, partitions) for key in keys]
    groups: dict[int, list[bytes]] = {}
    for payload, part in zip(payloads, parts, strict=True):
        groups.setdefault(part, []).append(frame_one(payload, max_record_bytes))
    return {part: (b"".join(lines), len(lines)) for part, lines in groups.items()}


def group_by_partition(
    payloads: Sequence[bytes], partitions_arr: np.ndarray, partitions: int
) -> dict[int, list[bytes]]:
    groups: dict[int, list[bytes]] = {}
    for payload, part in zip(payloads, partitions_arr.tolist(), strict=True):
        groups.setdefault(part, []).append(payload)
    return groups
