"""Step 1, decode: framed log lines -> typed columns, or dead letters with a reason.

Fast path: each chunk is decoded by ONE vectorized NDJSON call with the stream's
schema. If that call fails (some record is not valid JSON, has a wrong type, or was
stored escaped), a screen parses every line of the chunk (orjson, ~1 µs a line) and
flags the lines the decoder may refuse: not a JSON object, or a field of the wrong JSON
type. Those get the per-record checks (framing, UTF-8, JSON, types), which give each
its reason, and the rest are decoded in one call again. Only if that call still fails
(a value only the decoder refuses) is the chunk decoded in blocks of
:data:`BLOCK_RECORDS` records, a failing block checked record by record.

Why not blocks first: each decoder call costs ~1 ms whatever its size, so blocks of
256 records cost ~1 ms per 256 records before any record is checked, ~5x the screen.
(An earlier version halved the failing range recursively: with bad records spread
over a batch, every level of the recursion re-decoded nearly the whole batch, and
0.1 % malformed records made decoding ~10x slower.)
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import orjson
import polars as pl

from adpulse.contracts import Reason, Stream
from adpulse.transport.base import Chunk
from adpulse.transport.framing import DamagedRecordError, split_lines, unframe_line

#: Records per block when a chunk fails to decode at once. Small enough that most
#: blocks of a stream with a few bad records per thousand still decode in one call,
#: large enough that the per-call overhead stays small against the decoding itself.
BLOCK_RECORDS: Final = 256
#: JSON escapes the vectorized decoder turns into NUL: ``\\u0000`` itself and a lone
#: high surrogate (``\\ud800``-``\\udbff``, any case; found by trying all 65,536).
_NUL_ESCAPES = re.compile(rb"\\u(?:0000|[dD][89abAB])")


@dataclass(slots=True)
class Reject:
    """A record that will go to the dead letters."""

    row: int  # index of the record in the decoded batch (all chunks of the stream)
    reason: Reason
    detail: str
    payload: bytes


@dataclass(slots=True)
class Decoded:
    """A stream's records of one batch: typed rows plus the rejected ones."""

    stream: Stream
    rows: pl.DataFrame  # the stream's decode schema + ``_row`` (UInt32) + ``partition``
    rejects: list[Reject] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)
    chunk_starts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: False only when no string of ``rows`` can hold a NUL (validate then skips that
    #: check, a scan of every string column).
    may_hold_nul: bool = True
    _lines: list[bytes] | None = None

    @property
    def received(self) -> int:
        return int(sum(c.records for c in self.chunks))

    def line(self, row: int) -> bytes:
        """The stored line of record ``row`` (split lazily: only rejects need it)."""
        if self._lines is None:
            self._lines = [line for c in self.chunks for line in split_lines(c.data)]
        return self._lines[row]

    def locate(self, row: int) -> tuple[Chunk, int]:
        """The chunk a record came in and its index inside that chunk."""
        i = int(np.searchsorted(self.chunk_starts, row, side="right")) - 1
        return self.chunks[i], row - int(self.chunk_starts[i])


def decode(
    stream: Stream, chunks: list[Chunk], block_records: int = BLOCK_RECORDS, screen: bool = True
) -> Decoded:
    """Decode all chunks of one stream in a batch (one vectorized call per chunk, or one
    for all of them when they are small: :data:`JOIN_MAX_BYTES`).

    ``block_records``: records per block when a chunk fails to decode at once (see the
    module docstring); ``screen``: screen such a chunk before decoding it in blocks
    (False: blocks only). A record's fate depends on neither, which the tests check by
    varying them.
    """
    counts = np.array([c.records for c in chunks], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(chunks) else counts
    schema = stream.decode_schema
    empty = _empty_rows(stream)
    out = Decoded(stream=stream, rows=empty, chunks=chunks, chunk_starts=starts, may_hold_nul=False)
    if _decode_joined(out, schema):
        return out
    parts: list[pl.DataFrame] = []
    for chunk, start in zip(chunks, starts.tolist(), strict=True):
        if chunk.records == 0:
            continue
        # Decoding chunk by chunk avoids copying the whole batch into one buffer.
        frame = _try_decode(chunk.data, schema, chunk.records)
        escapes = nul_escape_lines(chunk.data)
        plain = frame is not None
        if frame is not None:
            frame = frame.with_row_index("_row", offset=start)
            nul = len(escapes) > 0
        else:
            # Records re-encoded by the per-record checks write a NUL as an escape the
            # raw (possibly base64-framed) lines may not show: assume there is one.
            nul = True
            lines = split_lines(chunk.data)
            pieces: list[pl.DataFrame] = []
            rejects: list[Reject] = []
            if not (screen and _decode_screened(lines, schema, pieces, rejects)):
                _decode_blocks(lines, schema, pieces, rejects, block_records)
            for r in rejects:
                r.row += start
            out.rejects.extend(rejects)
            frame = (
                pl.concat(pieces).with_columns((pl.col("_row") + start).cast(pl.UInt32))
                if pieces
                else empty.drop("partition")
            )
        frame = _reject_suspect_strings(
            frame, chunk.data, start, schema, out.rejects, escapes, plain
        )
        out.may_hold_nul |= nul
        parts.append(frame.with_columns(partition=pl.lit(chunk.partition, pl.Int32)))
    if parts:
        out.rows = pl.concat(parts, rechunk=False)
    return out


#: Chunks of one stream totalling at most this many bytes (a live batch's) are decoded
#: in one call: each call costs a fixed ~0.3 ms of CPU (decoder, row index, partition
#: column, suspect strings) whatever its size, and joining a few kB costs nothing. A
#: larger batch is decoded chunk by chunk, as is any batch whose joined decode fails.
JOIN_MAX_BYTES: Final = 1 << 20


def _decode_joined(out: Decoded, schema: dict[str, pl.DataType]) -> bool:
    """Decode ``out.chunks`` in one call when they are several and small; False (and
    ``out`` untouched) when they are not, or when any record fails to decode at once."""
    chunks = [c for c in out.chunks if c.records]
    if len(chunks) < 2 or sum(len(c.data) for c in chunks) > JOIN_MAX_BYTES:
        return False
    data = b"".join(c.data for c in chunks)
    frame = _try_decode(data, schema, sum(c.records for c in chunks))
    if frame is None:
        return False  # chunk by chunk: only the chunks at fault take the slow path
    partition = np.repeat(
        np.array([c.partition for c in chunks], dtype=np.int32), [c.records for c in chunks]
    )
    # The chunks without records hold no lines: row numbers run on unbroken.
    frame = frame.with_row_index("_row").with_columns(partition=pl.Series(partition))
    escapes = nul_escape_lines(data)
    out.rows = _reject_suspect_strings(frame, data, 0, schema, out.rejects, escapes, True)
    out.may_hold_nul = len(escapes) > 0
    return True


def _reject_suspect_strings(
    frame: pl.DataFrame,
    data: bytes,
    start: int,
    schema: dict[str, pl.DataType],
    rejects: list[Reject],
    escapes: np.ndarray,
    plain: bool,
) -> pl.DataFrame:
    """Rows the vectorized decoder read more leniently than the per-record checks,
    moved to ``rejects``.

    It reads a JSON object or array in a string field as its JSON text, and a lone
    high surrogate escape (``"\\ud800"``, not a character) as NUL, also in a field it
    does not keep; the per-record checks reject both (``wrong_type``,
    ``invalid_character``). Without this, a record's fate would depend on whether its
    neighbours decoded at once. Candidates (a string starting with ``{`` or ``[``, a
    line in ``escapes``: :func:`nul_escape_lines`) are rare and get the per-record
    checks, which decide; a NUL written as ``"\\u0000"`` passes them and is rejected
    by validate.

    ``plain``: ``frame`` was decoded from ``data`` as it is (every line a JSON record,
    none framed otherwise); then :func:`_may_hold_candidates` often proves that there is
    no candidate.
    """
    columns = [name for name, kind in _field_kinds(schema) if kind is _STR]
    if frame.height == 0:
        return frame
    if plain and not _may_hold_candidates(data):
        return frame  # (and no escape: a backslash counts, so ``escapes`` is empty)
    suspect: list[pl.Expr] = [
        pl.col(c).str.starts_with("{") | pl.col(c).str.starts_with("[") for c in columns
    ]
    if len(escapes):  # only rows still in the frame: the others were judged already
        suspect.append(pl.col("_row").is_in((escapes + start).tolist()))
    if not suspect:
        return frame
    candidates = frame.filter(pl.any_horizontal(suspect))["_row"].to_list()
    if not candidates:
        return frame
    lines = split_lines(data)
    dropped: list[int] = []
    for row in candidates:
        checked = check_one(lines[row - start], schema)
        if isinstance(checked, Reject):
            checked.row = row
            rejects.append(checked)
            dropped.append(row)
    if not dropped:
        return frame
    return frame.filter(~pl.Series(np.isin(frame["_row"].to_numpy(), dropped)))


def _may_hold_candidates(data: bytes) -> bool:
    """Whether the lines of ``data``, each a JSON object the decoder read, may hold a
    string starting with ``{`` or ``[``: False proves they hold none. Without a ``[``, a
    backslash (an escape) or any ``{`` but the one opening each record (no more ``{``
    than lines), no value is an array, no string starts with a bracket, no member's
    value is an object. Three scans at memchr speed: ~1 ms per MB, where a regular
    expression for the same took ~19 ms per MB."""
    return data.find(b"[") >= 0 or data.find(b"\\") >= 0 or data.count(b"{") > data.count(b"\n")


def nul_escape_lines(data: bytes) -> np.ndarray:
    """Indexes of the lines of ``data`` holding an escape the vectorized decoder turns
    into NUL (:data:`_NUL_ESCAPES`); usually none.

    Almost always answered by one memchr for a backslash, so no string column needs a
    scan for NUL: about 6 ms per 100 MB, against some 35 ms per column per million rows.
    """
    if data.find(b"\\") < 0:
        return _NO_LINES
    found = [m.start() for m in _NUL_ESCAPES.finditer(data)]
    if not found:
        return _NO_LINES
    newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 0x0A)
    return np.unique(np.searchsorted(newlines, found))


_NO_LINES: Final = np.zeros(0, dtype=np.int64)


def _empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


@functools.cache
def _empty_rows(stream: Stream) -> pl.DataFrame:
    """No rows of ``stream``, typed as :attr:`Decoded.rows` (built once: frames are
    immutable, and building one costs ~0.3 ms)."""
    return (
        _empty(stream.decode_schema)
        .with_row_index("_row")
        .with_columns(partition=pl.lit(0, pl.Int32))
        .clear()
    )


def _try_decode(data: bytes, schema: dict[str, pl.DataType], expected: int) -> pl.DataFrame | None:
    try:
        frame = pl.read_ndjson(data, schema=schema)
    except Exception:  # Polars raises ComputeError and friends for any bad record
        return None
    # A blank or whitespace-only record is skipped by the decoder: classify one by one.
    return frame if frame.height == expected else None


def _decode_screened(
    lines: list[bytes],
    schema: dict[str, pl.DataType],
    parts: list[pl.DataFrame],
    rejects: list[Reject],
) -> bool:
    """Decode ``lines`` in one call, but for the lines :func:`_flagged` picks, which get
    the per-record checks; one part, in line order. False, with ``parts`` and
    ``rejects`` untouched, when the rest still fails at once."""
    flagged = _flagged(lines, schema)
    keep = np.ones(len(lines), dtype=bool)
    keep[flagged] = False
    good = np.flatnonzero(keep)
    pieces: list[pl.DataFrame] = []
    if len(good):
        frame = _try_decode(
            b"\n".join([lines[i] for i in good.tolist()]) + b"\n", schema, len(good)
        )
        if frame is None:
            return False
        pieces.append(frame.select(pl.Series("_row", good, dtype=pl.UInt32), pl.all()))
    _decode_checked(lines, flagged, schema, pieces, rejects)
    if pieces:
        parts.append(pl.concat(pieces).sort("_row"))
    return True


def _flagged(lines: list[bytes], schema: dict[str, pl.DataType]) -> list[int]:
    """The lines the vectorized decoder may refuse or read otherwise than the per-record
    checks: not a JSON object (framed, empty, not UTF-8, not JSON), a number field of
    the wrong JSON type (as in :func:`_wrong_type`), or any ``[`` or inner ``{`` (an
    array or object, maybe in a string field). Flagging too many only costs their
    per-record checks; missing one only sends the chunk to the blocks."""
    kinds = _field_kinds(schema)
    ints = [name for name, kind in kinds if kind is _INT]
    numbers = [name for name, kind in kinds if kind is _FLOAT]
    loads, flagged = orjson.loads, []
    for i, line in enumerate(lines):
        if line.find(b"[") >= 0 or line.find(b"{", 1) >= 0:
            flagged.append(i)
            continue
        try:
            value = loads(line)
        except orjson.JSONDecodeError:
            flagged.append(i)
            continue
        if type(value) is not dict:
            flagged.append(i)
            continue
        for name in ints:
            v = value.get(name)
            if v is not None and (type(v) is not int or not _INT_MIN <= v <= _INT_MAX):
                flagged.append(i)
                break
        else:
            for name in numbers:
                if type(value.get(name)) not in _NUMBER:
                    flagged.append(i)
                    break
    return flagged


_NUMBER: Final = frozenset({int, float, type(None)})


def _decode_blocks(
    lines: list[bytes],
    schema: dict[str, pl.DataType],
    parts: list[pl.DataFrame],
    rejects: list[Reject],
    block_records: int,
) -> None:
    """Decode ``lines`` block by block; failing blocks are checked record by record."""
    for lo in range(0, len(lines), block_records):
        hi = min(lo + block_records, len(lines))
        frame = _try_decode(b"\n".join(lines[lo:hi]) + b"\n", schema, hi - lo)
        if frame is not None:
            parts.append(frame.with_row_index("_row", offset=lo))
        else:
            _decode_checked(lines, range(lo, hi), schema, parts, rejects)


def _decode_checked(
    lines: list[bytes],
    rows: Sequence[int],
    schema: dict[str, pl.DataType],
    parts: list[pl.DataFrame],
    rejects: list[Reject],
) -> None:
    """Reject what the cheap checks catch, then decode the rest in one call."""
    good: list[int] = []
    payloads: list[bytes] = []
    for row in rows:
        checked = check_one(lines[row], schema)
        if isinstance(checked, Reject):
            checked.row = row
            rejects.append(checked)
        else:
            good.append(row)
            payloads.append(checked)
    if not good:
        return
    frame = _try_decode(b"\n".join(payloads) + b"\n", schema, len(good))
    if frame is not None:
        parts.append(frame.select(pl.Series("_row", good, dtype=pl.UInt32), pl.all()))
        return
    # Rare: a value only the decoder itself refuses. Decode those records one by one.
    for row, payload in zip(good, payloads, strict=True):
        decoded = _decode_canonical(payload, lines[row], schema)
        if isinstance(decoded, Reject):
            decoded.row = row
            rejects.append(decoded)
        else:
            parts.append(decoded.with_row_index("_row", offset=row))


def decode_one(line: bytes, schema: dict[str, pl.DataType]) -> pl.DataFrame | Reject:
    """Decode one stored line, or say precisely why it cannot be decoded."""
    checked = check_one(line, schema)
    if isinstance(checked, Reject):
        return checked
    return _decode_canonical(checked, line, schema)


def check_one(line: bytes, schema: dict[str, pl.DataType]) -> bytes | Reject:
    """The record of one stored line re-encoded on one line (what the decoder reads),
    or a :class:`Reject` saying precisely why it cannot be decoded; checks everything
    but the decoder's own coercions, without calling the decoder."""
    try:
        payload, original_size = unframe_line(line)
    except DamagedRecordError as exc:
        return Reject(-1, Reason.DAMAGED_RECORD, str(exc), line)
    if original_size is not None:
        return Reject(-1, Reason.PAYLOAD_TOO_LARGE, f"{original_size} bytes", payload)
    if not payload.strip():
        return Reject(-1, Reason.EMPTY_PAYLOAD, "record has no content", payload)
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Reject(-1, Reason.INVALID_UTF8, str(exc), payload)
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        # "\ud800" alone is valid JSON syntax but no character: no column can hold it
        why = Reason.INVALID_CHARACTER if "surrogate" in str(exc) else Reason.INVALID_JSON
        return Reject(-1, why, str(exc), payload)
    if not isinstance(value, dict):
        return Reject(-1, Reason.NOT_AN_OBJECT, f"got a JSON {type(value).__name__}", payload)
    value = _first_values(payload, value)
    wrong = _wrong_type(value, schema)
    if wrong is not None:
        return Reject(-1, Reason.WRONG_TYPE, wrong, payload)
    # Re-encoded on one line (the payload may have had line breaks): the same decoder
    # and the same coercions as the fast path then read it.
    try:
        return orjson.dumps(value)
    except TypeError as exc:  # an integer past 64 bits in a text member named twice
        return Reject(-1, Reason.WRONG_TYPE, str(exc), payload)


def _first_values(payload: bytes, value: dict[str, object]) -> dict[str, object]:
    """``value`` (orjson's reading of ``payload``) with the first value of each member
    named twice: the vectorized decoder reads the first (and ignores the others), orjson
    keeps the last, and a record's fate must not depend on which path decodes it."""
    try:
        pairs = json.loads(payload, object_pairs_hook=lambda p: p)
    except ValueError:  # orjson read it; this parser should too
        return value
    names = [name for name, _ in pairs]
    if len(names) == len(value):
        return value  # no name twice: orjson's values, as ever
    first: dict[str, object] = {}
    for name, member in pairs:
        first.setdefault(name, member)
    return first


def _decode_canonical(
    record: bytes, line: bytes, schema: dict[str, pl.DataType]
) -> pl.DataFrame | Reject:
    try:
        return pl.read_ndjson(record + b"\n", schema=schema)
    except Exception as exc:  # noqa: BLE001 - the decoder's message is the detail
        payload, _ = unframe_line(line)
        return Reject(-1, Reason.WRONG_TYPE, str(exc).splitlines()[0], payload)


def _wrong_type(value: dict[str, object], schema: dict[str, pl.DataType]) -> str | None:
    for name, kind in _field_kinds(schema):
        v = value.get(name)
        if v is None:
            continue
        if kind is _INT and (
            isinstance(v, bool) or not isinstance(v, int) or not _INT_MIN <= v <= _INT_MAX
        ):
            return f"{name} must be an integer, got {_show(v)}"
        if kind is _FLOAT and (isinstance(v, bool) or not isinstance(v, int | float)):
            return f"{name} must be a number, got {_show(v)}"
        if kind is _STR and isinstance(v, dict | list):
            return f"{name} must be a string, got {_show(v)}"
    return None


_INT, _FLOAT, _STR, _OTHER = "int", "float", "str", "other"
#: What an Int64 column holds (the screen and the per-record checks test the same range).
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
#: (field, kind) per decode schema, by identity: schemas are module constants, and
#: comparing Polars data types costs microseconds per comparison (per record, per field).
_KINDS: dict[int, tuple[dict[str, pl.DataType], list[tuple[str, str]]]] = {}


def _field_kinds(schema: dict[str, pl.DataType]) -> list[tuple[str, str]]:
    cached = _KINDS.get(id(schema))
    if cached is not None and cached[0] is schema:
        return cached[1]
    kinds = [
        (
            name,
            _INT
            if dtype == pl.Int64
            else _FLOAT
            if dtype == pl.Float64
            else _STR
            if dtype == pl.String
            else _OTHER,
        )
        for name, dtype in schema.items()
    ]
    _KINDS[id(schema)] = (schema, kinds)
    return kinds


def _show(v: object) -> str:
    text = orjson.dumps(v).decode()
    return text if len(text) <= 40 else text[:37] + "..."
