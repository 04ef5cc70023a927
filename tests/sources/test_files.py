"""Data sets on disk: the original's CSV layout, JSON lines, chunked reading."""

from __future__ import annotations

import gzip
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from adpulse.contracts import Stream
from adpulse.sources.files import iter_stream_files, read_lines, write_dataset
from adpulse.sources.generator import EventGenerator, GeneratorConfig, MalformedKind

START = datetime(2023, 9, 9, 8)
END = datetime(2023, 9, 9, 14)
CONFIG = GeneratorConfig(ads=40, campaigns=8, users=1_000, malformed_rate=0.05)


def _all_lines(path: Path, chunk_bytes: int = 1 << 20) -> list[bytes]:
    return [line for chunk in read_lines(path, chunk_bytes) for line in chunk]


def _expected_lines(payloads: list[bytes]) -> list[bytes]:
    # A payload with a raw newline is two lines of a file.
    return b"\n".join(payloads).split(b"\n")


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_write_dataset_writes_the_generated_records_line_by_line(
    tmp_path: Path, compress: bool
) -> None:
    gen = EventGenerator(CONFIG)
    summary = write_dataset(tmp_path, gen, 15_000, START, END, compress=compress)
    events = EventGenerator(CONFIG).generate(15_000, START, END)
    files = iter_stream_files(tmp_path)
    assert set(files) == set(Stream)
    suffix = ".jsonl.gz" if compress else ".jsonl"
    for stream in Stream:
        assert files[stream] == tmp_path / f"{stream.value}{suffix}"
        lines = _all_lines(files[stream])
        assert lines == _expected_lines(events.records[stream])
        newlines = events.counts[stream].malformed.get(MalformedKind.EMBEDDED_NEWLINE, 0)
        assert newlines > 0 or stream is Stream.CONVERSIONS  # few conversions: maybe none
        assert summary["lines"][stream.value] == len(lines)
        assert summary["records"][stream.value] == len(events.records[stream])
        assert len(lines) == len(events.records[stream]) + newlines
        assert summary["counts"][stream.value] == events.counts[stream]
        assert summary["injected"][stream.value]["duplicates"] == events.counts[stream].duplicates
    if compress:
        raw = gzip.decompress(files[Stream.CLICKS].read_bytes())
        assert raw == b"\n".join(events.records[Stream.CLICKS]) + b"\n"


def test_dimension_csvs_use_the_original_layout(tmp_path: Path, samples: Path) -> None:
    gen = EventGenerator(CONFIG)
    write_dataset(tmp_path, gen, 1_000, START, END)
    for name, frame in (("campaigns.csv", gen.campaigns()), ("users.csv", gen.users())):
        written = (tmp_path / name).read_text().splitlines()
        original = (samples / name).read_text().splitlines()
        assert written[0] == original[0]
        # The original's rows appear verbatim.
        assert set(original[1:]) <= set(written[1:])
        assert all(line.count(", ") == frame.width - 1 for line in written)
        assert len(written) == frame.height + 1

        # Readable back: split on ", " gives the generator's table.
        read = pl.read_csv(tmp_path / name, separator=",", infer_schema=False).select(
            pl.all().str.strip_chars(" ").name.map(str.strip)
        )
        assert read.columns == frame.columns
        assert read.equals(frame.with_columns(pl.all().cast(pl.String)))


def test_only_the_stream_files_present_are_found(tmp_path: Path) -> None:
    (tmp_path / "clicks.jsonl").write_bytes(b"{}\n")
    (tmp_path / "conversions.jsonl.gz").write_bytes(gzip.compress(b"{}\n"))
    (tmp_path / "campaigns.csv").write_text("ad_id\n")
    assert iter_stream_files(tmp_path) == {
        Stream.CLICKS: tmp_path / "clicks.jsonl",
        Stream.CONVERSIONS: tmp_path / "conversions.jsonl.gz",
    }
    (tmp_path / "clicks.jsonl.gz").write_bytes(gzip.compress(b"{}\n"))
    with pytest.raises(ValueError, match="read twice"):
        iter_stream_files(tmp_path)


def test_write_dataset_replaces_a_file_of_the_other_suffix(tmp_path: Path) -> None:
    gen = EventGenerator(CONFIG)
    write_dataset(tmp_path, gen, 1_000, START, END, compress=True)
    write_dataset(tmp_path, gen, 1_000, START, END)
    assert sorted(p.name for p in tmp_path.glob("*.jsonl*")) == [
        "clicks.jsonl",
        "conversions.jsonl",
        "impressions.jsonl",
    ]


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 1 << 20])
def test_read_lines_keeps_every_record_whatever_the_chunk_size(
    tmp_path: Path, chunk_bytes: int
) -> None:
    long = b'{"pad": "' + b"x" * 300 + b'"}'
    records = [b'{"a": 1}', b"", b"", long, b"\xff\xfe", b"[1, 2]", b'{"b": 2}']
    plain = tmp_path / "clicks.jsonl"
    plain.write_bytes(b"\n".join(records) + b"\n")
    assert _all_lines(plain, chunk_bytes) == records

    crlf = tmp_path / "crlf.jsonl"
    crlf.write_bytes(b"\r\n".join(records) + b"\r\n")
    assert _all_lines(crlf, chunk_bytes) == records

    unterminated = tmp_path / "last.jsonl"
    unterminated.write_bytes(b"\n".join(records))
    assert _all_lines(unterminated, chunk_bytes) == records

    zipped = tmp_path / "clicks.jsonl.gz"
    zipped.write_bytes(gzip.compress(b"\n".join(records) + b"\n"))
    assert _all_lines(zipped, chunk_bytes) == records


def test_read_lines_yields_chunks_of_about_the_requested_size(tmp_path: Path) -> None:
    path = tmp_path / "impressions.jsonl"
    line = b'{"ad_id": 1001, "user_id": "U1234"}'
    path.write_bytes((line + b"\n") * 10_000)
    chunks = list(read_lines(path, 36 * 1000))
    assert [len(c) for c in chunks] == [1000] * 10
    assert (tmp_path / "empty.jsonl").write_bytes(b"") == 0
    assert list(read_lines(tmp_path / "empty.jsonl")) == []
    # Each chunk comes with its lines as the file holds them (publish need not join them).
    assert all(c.joined == b"\n".join(c) for c in chunks)
    crlf = tmp_path / "crlf.jsonl"
    crlf.write_bytes((line + b"\r\n") * 3)
    assert [c.joined for c in read_lines(crlf)] == [None]


def test_an_endless_line_is_cut_and_memory_stays_bounded(tmp_path: Path) -> None:
    from adpulse.sources.files import MAX_LINE_BYTES, read_lines

    path = tmp_path / "clicks.jsonl"
    path.write_bytes(b'{"a": 1}\n' + b"x" * (2 * MAX_LINE_BYTES + 5) + b"\n" + b'{"b": 2}\n')
    lines = [line for chunk in read_lines(path, 1 << 20) for line in chunk]
    assert [len(line) for line in lines] == [8, MAX_LINE_BYTES, 8]
    assert lines[2] == b'{"b": 2}'
