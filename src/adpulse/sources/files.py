"""Data sets on disk in the original's formats: JSON lines per stream, CSV dimensions.

A data set directory holds ``impressions.jsonl``, ``clicks.jsonl``, ``conversions.jsonl``
(any of them may be missing, or gzipped as ``.jsonl.gz``) and the dimension files
``campaigns.csv`` and ``users.csv``, whose values are separated by ``", "`` like the
original's samples.

Lines are records: an empty line is an (empty) record, and a malformed payload that
contains a raw newline becomes two records. The pipeline dead-letters both, so the
count "accepted + rejected = lines read" holds for any file.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import polars as pl

from adpulse.contracts import Stream
from adpulse.sources.generator import EventGenerator, MalformedKind, StreamCounts

CAMPAIGNS_FILE: Final = "campaigns.csv"
USERS_FILE: Final = "users.csv"
#: Stream file suffixes, in order of preference when a directory holds both.
STREAM_SUFFIXES: Final = (".jsonl", ".jsonl.gz")
#: The original's CSV separator (a comma and a space).
CSV_SEPARATOR: Final = ", "
DEFAULT_CHUNK_BYTES: Final = 4 * 1024 * 1024


def write_dataset(
    out_dir: Path | str,
    generator: EventGenerator,
    n_events: int,
    start: datetime,
    end: datetime,
    *,
    compress: bool = False,
) -> dict[str, Any]:
    """Write a generated data set (:meth:`EventGenerator.generate`) and its dimensions.

    Records are written part by part as they are generated (bounded memory), one per
    line, in arrival order. ``compress`` writes ``.jsonl.gz`` files. Returns a summary
    of the data set: files, records and lines per stream, and what was injected, as
    plain values (``injected``, JSON-serialisable) and as :class:`StreamCounts`
    (``counts``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(generator.campaigns(), out / CAMPAIGNS_FILE)
    write_csv(generator.users(), out / USERS_FILE)

    suffix = STREAM_SUFFIXES[1] if compress else STREAM_SUFFIXES[0]
    paths = {s: out / f"{s.value}{suffix}" for s in Stream}
    for s in Stream:  # a stale file of the other suffix would be read as well
        other = out / f"{s.value}{STREAM_SUFFIXES[0] if compress else STREAM_SUFFIXES[1]}"
        other.unlink(missing_ok=True)
    counts = {s: StreamCounts() for s in Stream}
    records = dict.fromkeys(Stream, 0)
    files: dict[Stream, io.BufferedIOBase] = {s: _open_write(paths[s], compress) for s in Stream}
    try:
        for part in generator.iter_generate(n_events, start, end):
            for s in Stream:
                payloads = part.records[s]
                if payloads:
                    files[s].write(b"\n".join(payloads))
                    files[s].write(b"\n")
                records[s] += len(payloads)
                counts[s] = counts[s] + part.counts[s]
    finally:
        for f in files.values():
            f.close()
    return {
        "directory": str(out),
        "files": {
            **{s.value: str(paths[s]) for s in Stream},
            "campaigns": str(out / CAMPAIGNS_FILE),
            "users": str(out / USERS_FILE),
        },
        "ads": generator.campaigns().height,
        "users": generator.users().height,
        "records": {s.value: records[s] for s in Stream},
        # A payload with a raw newline takes two lines of a file.
        "lines": {
            s.value: records[s] + counts[s].malformed.get(MalformedKind.EMBEDDED_NEWLINE, 0)
            for s in Stream
        },
        "injected": {s.value: _counts_dict(counts[s]) for s in Stream},
        # The same as objects, for tests and oracles (not JSON-serialisable).
        "counts": {s.value: counts[s] for s in Stream},
    }


def write_csv(frame: pl.DataFrame, path: Path) -> None:
    """Write a dimension table in the original's CSV layout (``", "`` between values).

    Values are written as they are, unquoted, so none may contain ``", "`` or a line
    break (the generator's never do).
    """
    text = frame.select(
        pl.concat_str(
            [pl.col(c).cast(pl.String).fill_null("") for c in frame.columns],
            separator=CSV_SEPARATOR,
        )
    ).to_series()
    bad = text.filter(text.str.count_matches(CSV_SEPARATOR, literal=True) != frame.width - 1)
    if len(bad) or text.str.contains("\n", literal=True).any():
        raise ValueError(
            f"cannot write {path.name}: a value contains {CSV_SEPARATOR!r} or a line break "
            f"(first row affected: {bad.head(1).to_list() or 'with a line break'})"
        )
    lines = [CSV_SEPARATOR.join(frame.columns), *text.to_list()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def iter_stream_files(directory: Path | str) -> dict[Stream, Path]:
    """The stream files present in ``directory`` (``<stream>.jsonl`` or ``.jsonl.gz``).

    A directory may hold only some streams. Raises ``ValueError`` if a stream has both
    a plain and a gzipped file (replaying both would send its records twice).
    """
    base = Path(directory)
    found: dict[Stream, Path] = {}
    for s in Stream:
        present = [base / f"{s.value}{suffix}" for suffix in STREAM_SUFFIXES]
        present = [p for p in present if p.is_file()]
        if len(present) > 1:
            raise ValueError(
                f"{base} holds both {present[0].name} and {present[1].name}: keep one of "
                f"them, or the {s.value} records would be read twice"
            )
        if present:
            found[s] = present[0]
    return found


#: A line longer than this is cut here when read (it is far over any record limit).
MAX_LINE_BYTES = 8 * 1024 * 1024


class LineChunk(list[bytes]):
    """A chunk of lines from :class:`LineReader`; ``joined`` is ``b"\\n".join(self)`` when
    the file holds it as is (no ``\\r\\n``), so that it need not be joined again."""

    joined: bytes | None = None


def read_lines(path: Path | str, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[list[bytes]]:
    """The lines of a file (without terminators), a list of about ``chunk_bytes`` at a time.

    Gzip-aware (by the ``.gz`` suffix); never loads the whole file. ``\\r\\n`` line ends
    are accepted. Empty lines are kept: each line is one record.
    """
    yield from LineReader(path, chunk_bytes)


class LineReader:
    """Iterates over a file's lines in chunks, telling how far through the file it is.

    :attr:`progress` (0..1, by bytes of the file on disk) lets a replay advance several
    files at the same pace.
    """

    def __init__(self, path: Path | str, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be at least 1, got {chunk_bytes}")
        self.path = Path(path)
        self.chunk_bytes = chunk_bytes
        self.size = self.path.stat().st_size
        self._raw: io.BufferedReader | None = None
        self._done = False

    @property
    def consumed(self) -> int:
        """Bytes of the file on disk read so far."""
        if self._done:
            return self.size
        if self._raw is None:
            return 0
        return min(self.size, self._raw.tell())

    @property
    def progress(self) -> float:
        if self.size == 0:
            return 1.0
        return self.consumed / self.size

    def __iter__(self) -> Iterator[LineChunk]:
        raw = self._raw = open(self.path, "rb")  # noqa: SIM115 - closed in finally
        try:
            stream: io.BufferedIOBase = raw
            if self.path.suffix == ".gz":
                stream = gzip.GzipFile(fileobj=raw, mode="rb")
            rest = b""
            skipping = False  # inside an over-long line whose head was already emitted
            while True:
                data = stream.read(self.chunk_bytes)
                if not data:
                    break
                if skipping:
                    newline = data.find(b"\n")
                    if newline < 0:
                        continue
                    data, skipping = data[newline + 1 :], False
                data = rest + data
                cut = data.rfind(b"\n")
                if cut < 0:  # one line longer than a chunk: keep reading, up to a bound
                    if len(data) > MAX_LINE_BYTES:
                        # Memory stays bounded: the head goes on (the pipeline rejects it
                        # as payload_too_large) and the rest of the line is skipped.
                        yield LineChunk([data[:MAX_LINE_BYTES]])
                        rest, skipping = b"", True
                    else:
                        rest = data
                    continue
                rest = data[cut + 1 :]
                yield _split(data[:cut])
            if rest:
                yield _split(rest)
        finally:
            self._done = True
            raw.close()


def _split(block: bytes) -> LineChunk:
    lines = LineChunk(block.split(b"\n"))
    if b"\r" in block:  # CRLF files: the \r belongs to the line end, not the record
        lines[:] = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    else:
        lines.joined = block
    return lines


def _open_write(path: Path, compress: bool) -> io.BufferedIOBase:
    if compress:
        return gzip.open(path, "wb", compresslevel=6)
    return io.BufferedWriter(io.FileIO(path, "w"), buffer_size=1 << 20)


def _counts_dict(counts: StreamCounts) -> dict[str, Any]:
    return {
        "events": counts.events,
        "duplicates": counts.duplicates,
        "out_of_order": counts.out_of_order,
        "late": counts.late,
        "unattributed": counts.unattributed,
        "malformed": {k.value: n for k, n in counts.malformed.items()},
    }
