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
languages. Records without a readable user id go to partition 0.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence

import numpy as np
import polars as pl
import polars_hash as plh
import xxhash

from adpulse.contracts import DEFAULT_MAX_RECORD_BYTES

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
