"""The embedded transport: a durable, partitioned log in local files.

Layout (one directory per stream and partition)::

    LOG_DIR/meta.json                                  {"format": ..., "partitions": N}
    LOG_DIR/clicks/0003/.lock                          flock'ed around every append
    LOG_DIR/clicks/0003/00000000000000000000.log       segment, named by its base offset
    LOG_DIR/clicks/0003/00000000000268435456.log       next segment (base = previous end)
    LOG_DIR/clicks/0003/00000000000268435456.times     append times of that segment

A segment holds exactly the framed lines of :mod:`adpulse.transport.framing`, so a chunk
read from it is NDJSON as is. An offset is ``str(byte position in the partition's whole
log)``: the segment holding position ``p`` is the one with the greatest base ``<= p``.

Invariants every reader and writer relies on:

- Appends happen under an exclusive ``flock`` of the partition's ``.lock`` file, each as
  one ``write`` of whole lines, so concurrent producer processes interleave whole lines.
- A segment is *sealed* when the next one is created, and the next one is named by the
  sealed segment's final size. So a reader at the end of segment ``b`` with size ``s``
  knows it may move on exactly when ``b + s`` exists as a segment file: one ``stat``.
- Only the last segment can end with a partial line (a crashed writer); the next append
  truncates it back to its last ``\\n`` under the lock before writing.
- Retention deletes whole sealed segments only, never the last one, so the first
  segment's base is always the log's start offset.

A segment's ``.times`` sidecar holds one 16-byte entry per append, written under the
same lock after the append's bytes: the log offset the append ended at and its clock
time (little-endian int64 and float64). Only the lag's age (:meth:`EmbeddedConsumer.lag`)
reads it; a missing or short sidecar (a log written before it existed, a crash between
the two writes) makes that age fall back to the segment file's modification time. It is
deleted with its segment by retention.

Damage from outside (a file cut, overwritten or deleted by hand or by a failing disk) is
reported by the reader with :class:`LogDamagedError` or
:class:`~adpulse.transport.base.OffsetOutOfRangeError`, naming the file and offset;
``adpulse log check`` finds all of it and ``adpulse log repair`` repairs it
(:mod:`adpulse.transport.embedded_repair`).
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import json
import logging
import os
import struct
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Final

import numpy as np

from adpulse.contracts import DEFAULT_MAX_RECORD_BYTES, Stream
from adpulse.transport.base import (
    Chunk,
    Consumer,
    Lag,
    OffsetOutOfRangeError,
    Producer,
    Transport,
)
from adpulse.transport.framing import count_lines

logger = logging.getLogger(__name__)

DEFAULT_SEGMENT_BYTES: Final = 256 * 1024 * 1024
META_FILE: Final = "meta.json"
LOCK_FILE: Final = ".lock"
SEGMENT_SUFFIX: Final = ".log"
TIMES_SUFFIX: Final = ".times"
#: One append-time entry of a ``.times`` sidecar: end offset, clock time in seconds.
_TIME_ENTRY: Final = struct.Struct("<qd")
_TIME_DTYPE: Final = np.dtype([("end", "<i8"), ("at", "<f8")])
LOG_FORMAT: Final = "adpulse-embedded-log/1"

# Each open partition costs file descriptors (writer: lock + segment, reader: segment);
# beyond this many, the least recently used partition's files are closed, so that
# hundreds of partitions stay under a laptop's default descriptor limit.
MAX_OPEN_PARTITIONS: Final = 128
# Step of the scans for a line end (torn-tail repair, the cut at a poll's budget).
_SCAN_BYTES: Final = 64 * 1024
# Block size of the reads that count lines (a block's temporary stays in cache).
_COUNT_BLOCK_BYTES: Final = 1024 * 1024


#: What to run when the log is damaged (the messages below end with it).
CHECK_HINT: Final = (
    "run `adpulse log check` to see what is damaged and `adpulse log repair --yes` to"
    " repair it (it reports what is lost)"
)


class LogDamagedError(RuntimeError):
    """The embedded log's files do not hold what its invariants say (cut, overwritten
    or deleted from outside); the message names the file and the offset."""


class OffsetNotAtRecordError(LogDamagedError, ValueError):
    """An offset inside a record: a caller's mistake, or a log changed under a checkpoint."""


def segment_name(base: int) -> str:
    """File name of the segment whose first byte is at log offset ``base``."""
    return f"{base:020d}{SEGMENT_SUFFIX}"


def times_name(base: int) -> str:
    """File name of the append-time sidecar of the segment at ``base``."""
    return f"{base:020d}{TIMES_SUFFIX}"


def list_segments(directory: Path) -> list[int]:
    """Base offsets of a partition's segment files, ascending (``[]`` if none)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    bases = [
        int(name[:-4])
        for name in names
        if name.endswith(SEGMENT_SUFFIX) and len(name) == 24 and name[:20].isdigit()
    ]
    bases.sort()
    return bases


def _parse_offset(stream: Stream, partition: int, offset: str) -> int:
    try:
        position = int(offset)
    except ValueError:
        position = -1
    if position < 0:
        raise ValueError(
            f"{offset!r} is not an offset of the embedded log ({stream} partition {partition}):"
            " offsets are the decimal byte positions returned as Chunk.end_offset"
        )
    return position


def _open_meta(log_dir: Path, partitions: int) -> None:
    """Create ``meta.json`` on first use, or check that it agrees with ``partitions``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    meta_path = log_dir / META_FILE
    if not meta_path.exists():
        # Write then hard-link: creation is atomic and never overwrites a meta.json that
        # another process created in the meantime (it is then checked like any other).
        tmp = log_dir / f".{META_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"format": LOG_FORMAT, "partitions": partitions}) + "\n")
        try:
            os.link(tmp, meta_path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    try:
        meta = json.loads(meta_path.read_text())
        existing = int(meta["partitions"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{meta_path} is not a valid embedded-log metadata file ({exc}); restore it as "
            f'{{"format": "{LOG_FORMAT}", "partitions": N}} with the partition count the '
            "log was created with, or delete the log directory to start a new log"
        ) from exc
    if existing != partitions:
        raise ValueError(
            f"The embedded log at {log_dir} has {existing} partitions per stream, but "
            f"{partitions} were requested. The partition count of an existing log cannot "
            f"change (records are placed by user_id hash modulo the count): set `partitions` "
            f"(ADPULSE_PARTITIONS) back to {existing}, or point `transport_url` at a new "
            f"directory (embedded://NEW_DIR), or delete {log_dir} to start over."
        )


def _write_all(fd: int, data: bytes) -> None:
    # One write() for the whole buffer; the loop only matters for writes the kernel
    # splits (over 2 GiB on Linux, or a signal), which the lock keeps contiguous anyway.
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EmbeddedTransport(Transport):
    """A durable partitioned log on local disk (the default transport).

    ``segment_bytes``: segments roll at an append boundary once the next append would
    make them larger (a single append larger than this gets a segment of its own).
    ``retention_bytes``: ``None`` keeps everything; otherwise :meth:`Consumer.ack` deletes
    the sealed segments lying wholly more than this many bytes before the acknowledged
    offset. A consumer asking for a deleted offset gets :class:`OffsetOutOfRangeError`.
    ``max_open_partitions``: partitions whose files each producer and consumer keeps
    open; beyond it the least recently used one's files are closed (and reopened on use).
    ``clock``: the append time recorded for the lag's age (seconds; tests inject one).
    """

    def __init__(
        self,
        log_dir: Path,
        partitions: int,
        *,
        fsync: bool = False,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        retention_bytes: int | None = None,
        max_open_partitions: int = MAX_OPEN_PARTITIONS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, got {partitions}")
        if segment_bytes < 1:
            raise ValueError(f"segment_bytes must be at least 1, got {segment_bytes}")
        if retention_bytes is not None and retention_bytes < 0:
            raise ValueError(f"retention_bytes must be >= 0 or None, got {retention_bytes}")
        if max_open_partitions < 1:
            raise ValueError(f"max_open_partitions must be at least 1, got {max_open_partitions}")
        self.log_dir = Path(log_dir)
        self.partitions = partitions
        self.fsync = fsync
        self.max_record_bytes = max_record_bytes
        self.segment_bytes = segment_bytes
        self.retention_bytes = retention_bytes
        self.max_open_partitions = max_open_partitions
        #: The append time written to the ``.times`` sidecars (seconds).
        self.clock = clock
        _open_meta(self.log_dir, partitions)
        # Weak: a caller creating a producer per request must not make this grow forever.
        self._clients: weakref.WeakSet[EmbeddedProducer | EmbeddedConsumer] = weakref.WeakSet()

    def partition_dir(self, stream: Stream, partition: int) -> Path:
        """Directory of one partition's segments (it may not exist yet)."""
        self.check_partition(partition)
        return self.log_dir / Stream(stream).value / f"{partition:04d}"

    def check_partition(self, partition: int) -> None:
        if not 0 <= partition < self.partitions:
            raise ValueError(
                f"partition {partition} does not exist: this log has partitions "
                f"0..{self.partitions - 1}"
            )

    def producer(self) -> EmbeddedProducer:
        """A new producer; not thread-safe (use one per thread or process)."""
        producer = EmbeddedProducer(self)
        self._clients.add(producer)
        return producer

    def consumer(self) -> EmbeddedConsumer:
        """A new consumer with its own descriptor cache; not thread-safe."""
        consumer = EmbeddedConsumer(self)
        self._clients.add(consumer)
        return consumer

    def truncate_before(self, stream: Stream, partition: int, offset: str) -> str:
        """Delete the sealed segments lying wholly below ``offset``; return the log's start.

        The last segment is never deleted, so the log keeps its end offset.
        """
        directory = self.partition_dir(stream, partition)
        position = _parse_offset(stream, partition, offset)
        if not directory.exists():
            return "0"
        lock_fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # Under the append lock, so no roll happens while we decide what is sealed.
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            bases = list_segments(directory)
            start = bases[0] if bases else 0
            for base, next_base in zip(bases, bases[1:], strict=False):
                if next_base > position:
                    break
                (directory / segment_name(base)).unlink()
                (directory / times_name(base)).unlink(missing_ok=True)
                start = next_base
            if self.fsync and bases and start != bases[0]:
                _fsync_dir(directory)
        finally:
            os.close(lock_fd)  # closing releases the flock
        return str(start)

    def close(self) -> None:
        for client in list(self._clients):
            client.close()
        self._clients.clear()


class _PartitionWriter:
    """Append side of one partition: its lock file and its last segment, kept open."""

    __slots__ = ("directory", "prefix", "lock_fd", "fd", "times_fd", "base", "dirty")

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.prefix = os.path.join(directory, "")  # str paths: cheap per-append checks
        self.lock_fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        self.fd = -1
        self.times_fd = -1
        self.base = -1
        self.dirty = False

    def append(self, data: bytes, segment_bytes: int, fsync: bool, at: float) -> None:
        """Append ``data`` (whole lines), appended at clock time ``at``."""
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        try:
            size = self._follow_last_segment(fsync)
            size = self._repair_torn_tail(size)
            if size > 0 and size + len(data) > segment_bytes:
                self._open(self.base + size, fsync)  # roll: seals the current segment
                size = 0
            _write_all(self.fd, data)
            os.write(self.times_fd, _TIME_ENTRY.pack(self.base + size + len(data), at))
            self.dirty = True
        finally:
            fcntl.flock(self.lock_fd, fcntl.LOCK_UN)

    def _follow_last_segment(self, fsync: bool) -> int:
        """Make ``fd`` the partition's last segment (others may have rolled); its size."""
        while True:
            if self.fd < 0:
                bases = list_segments(self.directory)
                self._open(bases[-1] if bases else 0, fsync)
            stat = os.fstat(self.fd)
            if stat.st_nlink == 0:
                # Our segment was deleted (retention of sealed segments, or the log was
                # replaced): its successors may be gone too, so list again rather than
                # append to a file nobody can read.
                os.close(self.fd)
                self.fd = -1
                continue
            size = stat.st_size
            if size == 0 or not os.path.exists(self.prefix + segment_name(self.base + size)):
                return size
            self._open(self.base + size, fsync)

    def _repair_torn_tail(self, size: int) -> int:
        """Cut a partial last line (a writer crashed mid-write) so appends stay aligned.

        Checked before every append, not only the first: another producer may have
        crashed since. Costs one 1-byte read when the tail is intact.
        """
        if size == 0 or os.pread(self.fd, 1, size - 1) == b"\n":
            return size
        end = size
        keep = 0
        while end > 0:
            start = max(0, end - _SCAN_BYTES)
            newline = os.pread(self.fd, end - start, start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        os.ftruncate(self.fd, keep)
        logger.warning(
            "embedded log %s: removed an incomplete last record (%d bytes at offset %d):"
            " a writer stopped mid-write, or the file was cut. No consumer can have read"
            " it as it was; if the file was cut after its record had been processed"
            " (a checkpoint past offset %d), %s",
            self.prefix + segment_name(self.base),
            size - keep,
            self.base + keep,
            self.base + keep,
            CHECK_HINT,
        )
        return keep

    def _open(self, base: int, fsync: bool) -> None:
        """Switch to (creating if needed) the segment at ``base``."""
        path = self.prefix + segment_name(base)
        created = not os.path.exists(path)
        # O_APPEND: every write lands at the current end even if another process
        # truncated or extended the file since (the flock orders them).
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        times_fd = os.open(
            self.prefix + times_name(base), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
        )
        if self.fd >= 0:
            if fsync and self.dirty:
                os.fsync(self.fd)  # what we wrote there is durable before we leave it
            os.close(self.fd)
        if self.times_fd >= 0:
            os.close(self.times_fd)
        self.fd = fd
        self.times_fd = times_fd
        self.base = base
        if fsync and created:
            _fsync_dir(self.directory)

    def flush(self, fsync: bool) -> None:
        if fsync and self.dirty and self.fd >= 0:
            os.fsync(self.fd)
        self.dirty = False

    def close(self, fsync: bool) -> None:
        self.flush(fsync)
        self._close_fds()

    def _close_fds(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.times_fd >= 0:
            os.close(self.times_fd)
            self.times_fd = -1
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1

    def __del__(self) -> None:
        # A producer dropped without close() must not leak descriptors (a collector
        # creating one per request would run out).
        with contextlib.suppress(Exception):
            self._close_fds()


class EmbeddedProducer(Producer):
    """Appends framed records to the embedded log; safe across processes.

    Bytes are written straight to the segment files (no user-space buffer), so they are
    visible to consumers as soon as ``send`` returns; :meth:`flush` adds ``fsync`` when
    the transport was opened with ``fsync=True``.
    """

    _transport: EmbeddedTransport

    def __init__(self, transport: EmbeddedTransport) -> None:
        self._transport = transport
        self._writers: OrderedDict[tuple[str, int], _PartitionWriter] = OrderedDict()

    def _append(self, stream: Stream, partition: int, framed: bytes) -> None:
        transport = self._transport
        self._writer(stream, partition).append(
            framed, transport.segment_bytes, transport.fsync, transport.clock()
        )

    def _writer(self, stream: Stream, partition: int) -> _PartitionWriter:
        key = (str(stream), partition)
        writer = self._writers.get(key)
        if writer is not None:
            self._writers.move_to_end(key)
            return writer
        writer = _PartitionWriter(self._transport.partition_dir(stream, partition))
        self._writers[key] = writer
        if len(self._writers) > self._transport.max_open_partitions:
            _, evicted = self._writers.popitem(last=False)
            evicted.close(self._transport.fsync)
        return writer

    def flush(self) -> None:
        """Make everything sent so far durable (``fsync`` when the transport asks for it)."""
        for writer in self._writers.values():
            writer.flush(self._transport.fsync)

    def flush_in_two(self) -> Callable[[], None]:
        """The segments written since the last flush, each on a descriptor of its own
        (``dup``: a roll or an eviction may close the writer's meanwhile), fsynced by the
        returned call. Appends after this call are left for the next flush."""
        if not self._transport.fsync:
            return super().flush_in_two()
        dirty = [w for w in self._writers.values() if w.dirty and w.fd >= 0]
        fds = [os.dup(w.fd) for w in dirty]
        for writer in dirty:
            writer.dirty = False

        def sync() -> None:
            try:
                for fd in fds:
                    os.fsync(fd)
            except BaseException:
                for writer in dirty:  # the next flush tries again
                    writer.dirty = True
                raise
            finally:
                for fd in fds:
                    os.close(fd)

        return sync

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close(self._transport.fsync)
        self._writers.clear()


class _PartitionReader:
    """Read side of one partition: known segment bases and one cached descriptor."""

    __slots__ = (
        "directory",
        "prefix",
        "stream",
        "partition",
        "bases",
        "fd",
        "fd_index",
        "trusted_offset",
    )

    def __init__(self, directory: Path, stream: Stream, partition: int) -> None:
        self.directory = directory
        # Segment paths as plain strings: building Path objects dominated idle polls.
        self.prefix = os.path.join(directory, "")
        self.stream = stream
        self.partition = partition
        self.bases: list[int] = []
        self.fd = -1
        self.fd_index = -1
        # The end offset this reader handed out last: resuming from it needs no checks.
        self.trusted_offset = -1

    # Segment navigation ----------------------------------------------------------------
    def refresh(self) -> None:
        self.bases = list_segments(self.directory)
        self._close_fd()

    def _close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = -1
        self.fd_index = -1

    def _select(self, index: int) -> None:
        if self.fd_index == index:
            return
        fd = os.open(self.prefix + segment_name(self.bases[index]), os.O_RDONLY)
        self._close_fd()
        self.fd = fd
        self.fd_index = index

    def _segment_exists(self, base: int) -> bool:
        return os.path.exists(self.prefix + segment_name(base))

    def position_segment(self, position: int) -> bool:
        """Select the segment holding ``position``; False if the partition has none.

        Raises :class:`OffsetOutOfRangeError` when ``position`` was deleted by retention.
        """
        for attempt in range(2):
            if attempt or not self.bases or position < self.bases[0]:
                self.refresh()
            if not self.bases:
                return False
            if position < self.bases[0]:
                raise OffsetOutOfRangeError(
                    f"offset {position} of {self.stream} partition {self.partition} was "
                    f"deleted by retention: the log now starts at offset {self.bases[0]}. "
                    "The records in between are lost to this consumer; resume from offset "
                    f"{self.bases[0]} explicitly to accept that, or reprocess them from "
                    "their source."
                )
            index = bisect.bisect_right(self.bases, position) - 1
            try:
                self._select(index)
            except FileNotFoundError:
                continue  # deleted by another process's retention: list again
            return True
        # Listed and then gone twice in a row: only retention racing ahead deletes segments.
        raise OffsetOutOfRangeError(
            f"offset {position} of {self.stream} partition {self.partition} was deleted by "
            "retention while being read"
        )

    def advance(self, position: int) -> bool:
        """At the end of the selected segment at ``position``: move on if it is sealed."""
        base = self.bases[self.fd_index]
        if position == base:
            return False  # an empty segment is never sealed
        next_index = self.fd_index + 1
        if next_index < len(self.bases):
            if self.bases[next_index] != position:
                following = self.bases[next_index]
                what = (
                    f"{following - position} bytes are missing"
                    if following > position
                    else f"the segments overlap by {position - following} bytes"
                )
                raise LogDamagedError(
                    f"the embedded log is damaged: segment {self.prefix}{segment_name(base)}"
                    f" ends at offset {position} but the next segment starts at offset"
                    f" {following} ({what}; sealed segments are never changed by adpulse):"
                    f" {CHECK_HINT}"
                )
        elif self._segment_exists(position):
            self.bases.append(position)
        elif os.fstat(self.fd).st_nlink == 0:
            # Our segment and its successor were deleted under us (retention elsewhere):
            # list again; position_segment raises if ``position`` is gone.
            self.refresh()
            return self.position_segment(position)
        else:
            return False
        self._select(next_index)
        return True

    def end(self) -> int | None:
        """Current end offset of the log (``None`` if never written)."""
        if not self.bases:
            self.refresh()
            if not self.bases:
                return None
        base = self.bases[-1]
        while True:
            try:
                size = os.stat(self.prefix + segment_name(base)).st_size
            except FileNotFoundError:
                self.refresh()  # the whole log was replaced under us
                if not self.bases:
                    return None
                base = self.bases[-1]
                continue
            if size == 0 or not self._segment_exists(base + size):
                return base + size
            base += size
            self.bases.append(base)

    # Reading --------------------------------------------------------------------------
    def check_offset(self, position: int) -> None:
        """Reject an offset beyond the end or inside a line (a foreign or stale offset)."""
        end = self.end()
        if position > (end or 0):
            raise OffsetOutOfRangeError(
                f"offset {position} of {self.stream} partition {self.partition} is beyond"
                f" the end of the log ({end or 0}) in {self.directory}:"
                f" {position - (end or 0)} bytes up to the committed checkpoint"
                " are missing (the log was cut, deleted or replaced after they were"
                " processed). If transport_url points at the wrong log, point it at the"
                f" original one; otherwise {CHECK_HINT}"
            )
        if (
            end is not None
            and position > 0
            and self.position_segment(position)
            and position > self.bases[self.fd_index]
        ):
            before = os.pread(self.fd, 1, position - 1 - self.bases[self.fd_index])
            if before != b"\n":
                raise OffsetNotAtRecordError(
                    f"offset {position} of {self.stream} partition {self.partition} is not at"
                    " a record boundary: use an end_offset returned by poll(). If it is a"
                    " committed checkpoint, the log changed under it (cut, then appended to):"
                    f" {CHECK_HINT}"
                )

    def read_lines(self, position: int, max_bytes: int) -> tuple[bytes, int]:
        """Complete lines from ``position``: about ``max_bytes``, at least one if any.

        Returns ``(data, end_position)``; ``data`` is ``b""`` when no complete line is
        available (a writer may be mid-line). Every byte is read once into its final
        place: the cut at the budget is found first (cheap probe), then read exactly,
        because copying a multi-MB chunk again to trim it would halve the throughput.
        """
        pieces: list[bytes] = []
        cursor = position
        remaining = max_bytes
        line_end = -1  # log position just after the last '\n' read so far
        while remaining > 0:
            in_segment = cursor - self.bases[self.fd_index]
            available = os.fstat(self.fd).st_size - in_segment
            if 0 < available <= remaining:
                block = os.pread(self.fd, available, in_segment)
            elif available > remaining:
                # The budget ends inside this segment: stop at the last line end within it,
                # or, if not even one line fits, at the end of the first line.
                length = self._last_line_end(in_segment, remaining)
                if length == 0 and line_end < 0:
                    length = self._first_line_end(in_segment, available)
                block = os.pread(self.fd, length, in_segment) if length else b""
                remaining = len(block)  # nothing more after this block
            else:
                block = b""
            if block:
                newline = block.rfind(b"\n")
                if newline >= 0:
                    line_end = cursor + newline + 1
                pieces.append(block)
                cursor += len(block)
                remaining -= len(block)
            if remaining > 0 and not self.advance(cursor):
                break
        if line_end < 0:
            return b"", position
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if line_end - position < len(data):
            # A line still being written (or torn): the only case that copies again.
            data = data[: line_end - position]
        return data, line_end

    def _last_line_end(self, in_segment: int, window: int) -> int:
        """Length of the longest run of whole lines in ``window`` bytes from ``in_segment``."""
        end = in_segment + window
        while end > in_segment:
            start = max(in_segment, end - _SCAN_BYTES)
            newline = os.pread(self.fd, end - start, start).rfind(b"\n")
            if newline >= 0:
                return start + newline + 1 - in_segment
            end = start
        return 0

    def _first_line_end(self, in_segment: int, available: int) -> int:
        """Length through the first ``\\n`` within ``available`` bytes (0: none yet)."""
        start = in_segment
        end = in_segment + available
        while start < end:
            stop = min(end, start + _SCAN_BYTES)
            newline = os.pread(self.fd, stop - start, start).find(b"\n")
            if newline >= 0:
                return start + newline + 1 - in_segment
            start = stop
        return 0

    # The lag --------------------------------------------------------------------------
    def count_lines(self, start: int, stop: int) -> int:
        """Line ends in the log between offsets ``start`` and ``stop`` (listed segments)."""
        count = 0
        cursor = start
        while cursor < stop:
            index = bisect.bisect_right(self.bases, cursor) - 1
            base = self.bases[index]
            upto = stop if index + 1 == len(self.bases) else min(stop, self.bases[index + 1])
            fd = os.open(self.prefix + segment_name(base), os.O_RDONLY)
            try:
                while cursor < upto:
                    block = os.pread(fd, min(_COUNT_BLOCK_BYTES, upto - cursor), cursor - base)
                    if not block:
                        break  # shorter than listed: cut from outside, `log check` says so
                    count += count_lines(block)
                    cursor += len(block)
            finally:
                os.close(fd)
            cursor = upto
        return count

    def append_time(self, position: int) -> float:
        """Clock time of the append that wrote the byte at ``position`` (a listed
        segment's): from the segment's ``.times`` sidecar, else its modification time."""
        base = self.bases[bisect.bisect_right(self.bases, position) - 1]
        try:
            raw = np.fromfile(self.prefix + times_name(base), dtype=np.uint8)
        except FileNotFoundError:
            raw = np.zeros(0, dtype=np.uint8)
        entries = raw[: len(raw) - len(raw) % _TIME_DTYPE.itemsize].view(_TIME_DTYPE)
        index = int(np.searchsorted(entries["end"], position, side="right"))
        if index < len(entries):
            return float(entries["at"][index])
        return os.stat(self.prefix + segment_name(base)).st_mtime

    def close(self) -> None:
        self._close_fd()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # see _PartitionWriter.__del__
            self._close_fd()


class EmbeddedConsumer(Consumer):
    """Reads chunks of complete lines from the embedded log with cached descriptors."""

    def __init__(self, transport: EmbeddedTransport) -> None:
        self._transport = transport
        self._readers: OrderedDict[tuple[str, int], _PartitionReader] = OrderedDict()
        #: (from, to, records) of the last lag count per partition, so the next count
        #: reads only what was consumed and appended since, never the whole backlog again.
        self._counted: dict[tuple[str, int], tuple[int, int, int]] = {}

    def _reader(self, stream: Stream, partition: int) -> _PartitionReader:
        key = (str(stream), partition)
        reader = self._readers.get(key)
        if reader is not None:
            self._readers.move_to_end(key)
            return reader
        reader = _PartitionReader(
            self._transport.partition_dir(stream, partition), Stream(stream), partition
        )
        self._readers[key] = reader
        if len(self._readers) > self._transport.max_open_partitions:
            _, evicted = self._readers.popitem(last=False)
            evicted.close()
        return reader

    def poll(
        self, stream: Stream, partition: int, after: str | None, max_bytes: int
    ) -> Chunk | None:
        """Complete lines after ``after`` (``None``: from the log's start), or ``None``.

        At most about ``max_bytes``, but at least one whole line if one is available.
        Raises :class:`OffsetOutOfRangeError` for an offset deleted by retention or
        beyond the log's end, and ``ValueError`` for one inside a line.
        """
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        stream = Stream(stream)
        reader = self._reader(stream, partition)
        if after is None:
            reader.refresh()  # the start may have moved (retention in another process)
            if not reader.bases:
                return None
            position = reader.bases[0]
        else:
            position = _parse_offset(stream, partition, after)
            if position != reader.trusted_offset:
                reader.check_offset(position)
                reader.trusted_offset = position  # idle polls from here skip the checks
        if not reader.position_segment(position):
            return None
        data, end = reader.read_lines(position, max_bytes)
        if not data:
            return None
        reader.trusted_offset = end
        return Chunk(
            stream=stream,
            partition=partition,
            start_offset=after,
            end_offset=str(end),
            data=data,
            records=count_lines(data),
        )

    def lag_bytes(self, stream: Stream, partition: int, after: str | None) -> int:
        """Bytes appended after ``after`` (including a line still being written)."""
        stream = Stream(stream)
        reader = self._reader(stream, partition)
        end = reader.end()
        if end is None:
            return 0
        if after is None:
            return end - reader.bases[0]
        return max(0, end - _parse_offset(stream, partition, after))

    def lag(self, stream: Stream, partition: int, after: str | None) -> Lag:
        """Bytes as :meth:`lag_bytes`; the records (complete lines) after ``after``,
        counted exactly; the age from the ``.times`` sidecars (module docs)."""
        stream = Stream(stream)
        reader = self._reader(stream, partition)
        end = reader.end()
        if end is None:
            return Lag(0, 0, 0.0)
        start = reader.bases[0]
        position = start if after is None else _parse_offset(stream, partition, after)
        behind = max(0, end - position)
        first = max(position, start)  # bytes deleted by retention are not read
        if first >= end:
            return Lag(behind, 0, 0.0)
        key = (str(stream), partition)
        counted = self._counted.get(key)
        if (
            counted is not None
            and start <= counted[0] <= first
            and counted[1] <= end
            and (first - counted[0]) + (end - counted[1]) < end - first
        ):
            records = (
                counted[2]
                - reader.count_lines(counted[0], first)
                + reader.count_lines(counted[1], end)
            )
        else:
            records = reader.count_lines(first, end)
        self._counted[key] = (first, end, records)
        if not records:
            return Lag(behind, 0, 0.0)  # only a line still being written
        seconds = reader.append_time(end - 1) - reader.append_time(first)
        return Lag(behind, records, max(0.0, seconds))

    def ack(self, stream: Stream, partition: int, offset: str) -> None:
        """Apply ``retention_bytes`` (if set) behind the committed ``offset``."""
        retention = self._transport.retention_bytes
        if retention is None:
            return
        keep_from = _parse_offset(Stream(stream), partition, offset) - retention
        if keep_from > 0:
            self._transport.truncate_before(stream, partition, str(keep_from))

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
