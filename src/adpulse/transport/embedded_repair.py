"""Checking and repairing the embedded log: ``adpulse log check`` and ``adpulse log repair``.

The embedded log (:mod:`.embedded`) keeps its invariants as long as only adpulse writes
its files. A file cut, overwritten or deleted from outside (by hand, by a full or failing
disk, by a copy that stopped half-way) breaks them, and the reader then stops with an
error naming the file. :func:`check_log` finds every such damage, per stream and
partition, against the checkpoints the warehouse committed:

- ``torn_tail``: the last segment ends inside a record (a writer stopped mid-write, or the
  file was cut);
- ``cut_segment``: a sealed segment ends inside a record, or before the next segment's
  first offset (bytes are missing in the middle of the log; a deleted segment too);
- ``segment_overlap``: a sealed segment runs past the next one's first offset (bytes were
  added to it); not repairable here;
- ``damaged_record``: a line no writer produces (:func:`.framing.unframe_line`): left in
  place, the processor dead-letters it with reason ``damaged_record``;
- ``checkpoint_beyond_end``, ``checkpoint_before_start``, ``checkpoint_inside_record``:
  a committed checkpoint that does not point at a record boundary of the log.

There are no checksums (a chunk must stay plain NDJSON for the vectorized decoder), so
bytes changed inside a record that still frames correctly cannot be told from a record
sent that way; the processor dead-letters them when they are not a valid event.

:func:`repair_log` repairs under each partition's append lock (producers wait): it cuts
a torn tail back to the last whole record, cuts a damaged sealed segment back to its last
whole record and fills the bytes up to the next segment with one *lost-bytes* line (see
:func:`.framing.lost_bytes_line`: record offsets after it stay valid, and the processor
dead-letters it, saying how many bytes were lost there), and computes checkpoints that
point at record boundaries again. :func:`commit_checkpoints` writes those to the
warehouse. What is lost is counted exactly, per stream and partition: records and bytes
cut from the log, and of those the records never processed (their data is gone) apart
from those processed before (the warehouse keeps their results).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from adpulse.contracts import Stream
from adpulse.storage.warehouse.base import BatchOutput, Warehouse
from adpulse.transport.embedded import LOCK_FILE, count_lines, list_segments, segment_name
from adpulse.transport.framing import (
    LOST_LINE_MIN_BYTES,
    DamagedRecordError,
    lost_bytes_line,
    unframe_line,
)

DamageKind = Literal[
    "torn_tail",
    "cut_segment",
    "segment_overlap",
    "damaged_record",
    "checkpoint_beyond_end",
    "checkpoint_before_start",
    "checkpoint_inside_record",
]
Key = tuple[Stream, int]
#: Damaged lines listed one by one per partition; beyond, they are counted.
_LISTED_LINES: Final = 20


@dataclass(frozen=True, slots=True)
class Damage:
    """One damage found: where (stream, partition, file, log offset, bytes) and what."""

    stream: Stream
    partition: int
    kind: DamageKind
    file: Path | None
    offset: int
    length: int
    detail: str
    repairable: bool = True

    def describe(self) -> str:
        return f"{self.stream} partition {self.partition}: {self.detail}"


@dataclass(slots=True)
class _SealCut:
    """A sealed segment to cut at ``keep`` (bytes) and fill up to ``next_base``."""

    path: Path
    base: int
    size: int
    keep: int
    next_base: int
    lines_cut: int  # lines (whole or not) between keep and the segment's end


@dataclass(slots=True)
class PartitionScan:
    """What :func:`check_log` found in one partition, and what a repair would change."""

    stream: Stream
    partition: int
    start: int = 0
    end: int = 0
    records: int = 0
    damages: list[Damage] = field(default_factory=list)
    damaged_lines: int = 0
    lost_lines_filled: int = 0
    tail: tuple[Path, int, int, int] | None = None  # path, base, size, keep
    seals: list[_SealCut] = field(default_factory=list)
    checkpoint: int | None = None
    new_checkpoint: int | None = None

    @property
    def key(self) -> Key:
        return (self.stream, self.partition)


@dataclass(slots=True)
class LogCheck:
    """The result of :func:`check_log` over every stream and partition."""

    log_dir: Path
    scans: dict[Key, PartitionScan]

    @property
    def damages(self) -> list[Damage]:
        return [d for scan in self.scans.values() for d in scan.damages]

    @property
    def ok(self) -> bool:
        return not self.damages

    @property
    def checkpoint_changes(self) -> dict[Key, tuple[int, int]]:
        """``{(stream, partition): (committed, after repair)}`` where they differ."""
        return {
            k: (s.checkpoint, s.new_checkpoint)
            for k, s in self.scans.items()
            if s.checkpoint is not None
            and s.new_checkpoint is not None
            and s.checkpoint != s.new_checkpoint
        }


@dataclass(frozen=True, slots=True)
class PartitionRepair:
    """What :func:`repair_log` changed in one partition, and what was lost.

    ``removed_records``/``removed_bytes``: cut from the log by the repair (an incomplete
    record counts as one). ``missing_bytes``: already gone before (cut from a file, or a
    gap between segments), now filled by a lost-bytes line or beyond the end.
    ``lost_records``: removed records that were never processed (their data is gone);
    ``processed_records``: removed records processed before (their results are kept).
    """

    stream: Stream
    partition: int
    removed_records: int
    removed_bytes: int
    missing_bytes: int
    lost_records: int
    processed_records: int
    filled_bytes: int
    checkpoint: tuple[int, int] | None

    def describe(self) -> str:
        parts = []
        if self.removed_records:
            parts.append(
                f"cut {self.removed_records} record(s), {self.removed_bytes} bytes:"
                f" {self.lost_records} never processed (lost),"
                f" {self.processed_records} processed before (results kept)"
            )
        if self.missing_bytes:
            parts.append(f"{self.missing_bytes} bytes were already missing")
        if self.filled_bytes:
            parts.append(f"filled {self.filled_bytes} bytes with a lost-bytes record")
        if self.checkpoint is not None:
            parts.append(f"checkpoint {self.checkpoint[0]} -> {self.checkpoint[1]}")
        return f"{self.stream} partition {self.partition}: " + "; ".join(parts)


def check_log(
    log_dir: Path, partitions: int, checkpoints: Mapping[Key, str] | None = None
) -> LogCheck:
    """Check every partition of the log at ``log_dir`` (framing, segment continuity, and
    ``checkpoints``, the warehouse's, against the log's records). Reads every byte."""
    checkpoints = checkpoints or {}
    scans = {}
    for stream in Stream:
        for partition in range(partitions):
            scans[(stream, partition)] = _scan_partition(
                log_dir, stream, partition, checkpoints.get((stream, partition))
            )
    return LogCheck(log_dir, scans)


def repair_log(
    log_dir: Path, partitions: int, checkpoints: Mapping[Key, str] | None = None
) -> tuple[list[PartitionRepair], dict[Key, str]]:
    """Repair what :func:`check_log` finds repairable (see the module docs); returns what
    was done per damaged partition and the checkpoints to commit
    (:func:`commit_checkpoints`). Each partition is checked again and repaired under its
    append lock, so producers may keep running (they wait); stop the processor first."""
    checkpoints = checkpoints or {}
    repairs: list[PartitionRepair] = []
    moved: dict[Key, str] = {}
    for stream in Stream:
        for partition in range(partitions):
            directory = log_dir / stream.value / f"{partition:04d}"
            key = (stream, partition)
            with _append_lock(directory):
                scan = _scan_partition(log_dir, stream, partition, checkpoints.get(key))
                if not scan.damages:
                    continue
                repair = _repair_partition(scan)
            if repair is not None:
                repairs.append(repair)
                if repair.checkpoint is not None:
                    moved[key] = str(repair.checkpoint[1])
    return repairs, moved


def commit_checkpoints(warehouse: Warehouse, offsets: Mapping[Key, str]) -> None:
    """Write ``offsets`` as the committed checkpoints, in one ordinary (empty) commit."""
    if not offsets:
        return
    warehouse.commit(BatchOutput.empty(warehouse.reserve_batch_ids(1), offsets=dict(offsets)))


# -- scanning --------------------------------------------------------------------------------
def _scan_partition(
    log_dir: Path, stream: Stream, partition: int, checkpoint: str | None
) -> PartitionScan:
    directory = log_dir / stream.value / f"{partition:04d}"
    scan = PartitionScan(stream, partition)
    bases = list_segments(directory)
    # Where whole records begin and end, for the checkpoint check: (first, last) offsets
    # of the intact, contiguous line data of each segment, and each segment's data.
    segments: list[tuple[int, bytes]] = []
    for i, base in enumerate(bases):
        path = directory / segment_name(base)
        data = path.read_bytes()
        segments.append((base, data))
        size = len(data)
        complete = data.rfind(b"\n") + 1
        scan.records += count_lines(data)
        _scan_lines(scan, path, base, data, complete)
        if i == len(bases) - 1:
            if complete < size:
                scan.tail = (path, base, size, complete)
                scan.damages.append(
                    Damage(
                        stream,
                        partition,
                        "torn_tail",
                        path,
                        base + complete,
                        size - complete,
                        f"{path} ends inside a record: {size - complete} bytes at offset"
                        f" {base + complete} are an incomplete record (a writer stopped"
                        " mid-write, or the file was cut); repair cuts them",
                    )
                )
            continue
        next_base = bases[i + 1]
        end = base + size
        if next_base < end:
            scan.damages.append(
                Damage(
                    stream,
                    partition,
                    "segment_overlap",
                    path,
                    next_base,
                    end - next_base,
                    f"{path} runs {end - next_base} bytes past offset {next_base}, where the"
                    f" next segment begins (bytes were added to a sealed segment); not"
                    f" repairable here: restore {path} from a copy, or move the log aside",
                    repairable=False,
                )
            )
        elif complete < size or next_base > end:
            keep, lines_cut = complete, (1 if complete < size else 0)
            # The lost-bytes line needs room: cut whole records too if the gap is small.
            while next_base - (base + keep) < LOST_LINE_MIN_BYTES and keep > 0:
                keep = data.rfind(b"\n", 0, keep - 1) + 1
                lines_cut += 1
            missing = next_base - end
            what = []
            if complete < size:
                what.append(f"ends inside a record ({size - complete} bytes at {base + complete})")
            if missing:
                what.append(f"{missing} bytes before offset {next_base} are missing")
            repairable = next_base - (base + keep) >= LOST_LINE_MIN_BYTES
            scan.seals.append(_SealCut(path, base, size, keep, next_base, lines_cut))
            scan.damages.append(
                Damage(
                    stream,
                    partition,
                    "cut_segment",
                    path,
                    base + keep,
                    next_base - (base + keep),
                    f"sealed segment {path} " + " and ".join(what) + "; repair cuts it back"
                    f" to offset {base + keep} and fills the bytes up to {next_base} with one"
                    " lost-bytes record",
                    repairable=repairable,
                )
            )
    if bases:
        scan.start = bases[0]
        scan.end = bases[-1] + len(segments[-1][1])
    if checkpoint is not None:
        _check_checkpoint(scan, checkpoint, segments, directory)
    return scan


def _scan_lines(scan: PartitionScan, path: Path, base: int, data: bytes, complete: int) -> None:
    """Record the lines of ``data[:complete]`` that no writer produces."""
    starts = [0] if complete and data[:1] in (b"\x00", b"\n") else []
    for pattern in (b"\n\x00", b"\n\n"):
        i = data.find(pattern, 0, complete)
        while i >= 0 and i + 1 < complete:
            starts.append(i + 1)
            i = data.find(pattern, i + 1, complete)
    for start in sorted(starts):
        line = data[start : data.index(b"\n", start)]
        try:
            unframe_line(line)
        except DamagedRecordError as exc:
            if exc.lost_bytes is not None:
                scan.lost_lines_filled += 1  # a repair's lost-bytes record: known
                continue
            scan.damaged_lines += 1
            if scan.damaged_lines <= _LISTED_LINES:
                scan.damages.append(
                    Damage(
                        scan.stream,
                        scan.partition,
                        "damaged_record",
                        path,
                        base + start,
                        len(line) + 1,
                        f"{path}: the record at offset {base + start} is damaged ({exc});"
                        " it stays in place, and the processor dead-letters it with reason"
                        " damaged_record",
                        repairable=False,
                    )
                )


def _check_checkpoint(
    scan: PartitionScan, checkpoint: str, segments: list[tuple[int, bytes]], directory: Path
) -> None:
    try:
        c = int(checkpoint)
    except ValueError:
        return  # not an embedded-log offset: another transport's checkpoint
    scan.checkpoint = c
    stream, partition = scan.stream, scan.partition
    new_end = scan.end
    if scan.tail is not None:
        _, base, _, keep = scan.tail
        new_end = base + keep
    if c > new_end:
        new = new_end
        missing = max(0, c - scan.end)
        if c > scan.end:
            scan.damages.append(
                Damage(
                    stream,
                    partition,
                    "checkpoint_beyond_end",
                    None,
                    scan.end,
                    missing,
                    f"the warehouse's checkpoint is at offset {c}, beyond the end of the log"
                    f" in {directory} at {scan.end}: {missing} bytes processed before are no"
                    f" longer in the log (their results are kept); repair moves the"
                    f" checkpoint to {new}",
                )
            )
        else:  # inside the torn tail: reported with it
            scan.damages.append(
                Damage(
                    stream,
                    partition,
                    "checkpoint_inside_record",
                    None,
                    new_end,
                    c - new_end,
                    f"the warehouse's checkpoint {c} lies inside the incomplete last record"
                    f" at {new_end}; repair moves it to {new}",
                )
            )
        scan.new_checkpoint = new
        return
    if c < scan.start:
        scan.new_checkpoint = scan.start
        scan.damages.append(
            Damage(
                stream,
                partition,
                "checkpoint_before_start",
                None,
                c,
                scan.start - c,
                f"the warehouse's checkpoint {c} lies before the log's start {scan.start} in"
                f" {directory}: {scan.start - c} bytes never processed were deleted"
                f" (retention, or by hand); repair moves the checkpoint to {scan.start},"
                " accepting their loss",
            )
        )
        return
    for seal in scan.seals:
        if seal.base + seal.keep < c < seal.next_base:
            scan.new_checkpoint = seal.next_base
            scan.damages.append(
                Damage(
                    stream,
                    partition,
                    "checkpoint_inside_record",
                    seal.path,
                    c,
                    0,
                    f"the warehouse's checkpoint {c} lies in the damaged end of {seal.path};"
                    f" what was there was processed: repair moves it to {seal.next_base}",
                )
            )
            return
    scan.new_checkpoint = c
    if c == scan.start or not segments:
        return
    for base, data in reversed(segments):
        if base < c:
            if c - base > len(data) or data[c - base - 1 : c - base] == b"\n":
                return  # at a boundary (or in a gap, handled with its segment)
            record_start = base + data.rfind(b"\n", 0, c - base - 1) + 1
            scan.new_checkpoint = record_start
            scan.damages.append(
                Damage(
                    stream,
                    partition,
                    "checkpoint_inside_record",
                    directory / segment_name(base),
                    c,
                    0,
                    f"the warehouse's checkpoint {c} lies inside the record at offset"
                    f" {record_start} (the log was cut, then appended to); repair moves it"
                    f" to {record_start}, so that record is processed",
                )
            )
            return
        if base == c:
            return


# -- repairing -------------------------------------------------------------------------------
def _repair_partition(scan: PartitionScan) -> PartitionRepair | None:
    if not any(d.repairable for d in scan.damages):
        return None
    c = scan.checkpoint
    removed_records = removed_bytes = missing = lost = processed = filled = 0
    for seal in scan.seals:
        if seal.next_base - (seal.base + seal.keep) < LOST_LINE_MIN_BYTES:
            continue  # reported as not repairable
        cut = seal.size - seal.keep
        gap = seal.next_base - (seal.base + seal.size)
        fill = seal.next_base - (seal.base + seal.keep)
        with seal.path.open("r+b") as f:
            f.truncate(seal.keep)
            f.seek(seal.keep)
            f.write(lost_bytes_line(fill, fill))
            f.flush()
            os.fsync(f.fileno())
        removed_records += seal.lines_cut
        removed_bytes += cut
        missing += gap
        filled += fill
        if c is not None and c > seal.base + seal.keep:
            processed += seal.lines_cut
        else:
            lost += seal.lines_cut
    if scan.tail is not None:
        path, base, size, keep = scan.tail
        with path.open("r+b") as f:
            f.truncate(keep)
            os.fsync(f.fileno())
        removed_records += 1
        removed_bytes += size - keep
        if c is not None and c > base + keep:
            processed += 1
            missing += max(0, c - (base + size))
        else:
            lost += 1
    elif c is not None and c > scan.end:
        missing += c - scan.end
    if c is not None and c < scan.start:
        missing += scan.start - c  # deleted before: how many records, nobody knows
    moved = None
    if c is not None and scan.new_checkpoint is not None and scan.new_checkpoint != c:
        moved = (c, scan.new_checkpoint)
    return PartitionRepair(
        scan.stream,
        scan.partition,
        removed_records=removed_records,
        removed_bytes=removed_bytes,
        missing_bytes=missing,
        lost_records=lost,
        processed_records=processed,
        filled_bytes=filled,
        checkpoint=moved,
    )


@contextlib.contextmanager
def _append_lock(directory: Path) -> Iterator[None]:
    """The partition's append lock (what producers take around each append)."""
    if not directory.exists():
        yield
        return
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
