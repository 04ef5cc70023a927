"""Publishing raw payloads to a transport, and replaying a data set directory.

Records are partitioned by ``user_id`` (:func:`adpulse.transport.framing.partition_of`),
so a user's clicks and conversions meet in one partition. The user ids of a batch are
read by one msgspec call over the whole batch that skips the rest of each record
(:func:`adpulse.transport.framing.partitions_of_records`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from adpulse.contracts import DEFAULT_MAX_RECORD_BYTES, PARTITION_KEY, Stream
from adpulse.sources.files import DEFAULT_CHUNK_BYTES, LineReader, iter_stream_files
from adpulse.transport import framing
from adpulse.transport.base import Producer

#: When throttled, records are sent in slices of at most this long at the target rate.
_THROTTLE_SLICE_SECONDS = 0.05
_MIN_CHUNK_BYTES = 16 * 1024


def publish(
    producer: Producer,
    stream: Stream,
    payloads: Sequence[bytes],
    partitions: int,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    *,
    joined: bytes | None = None,
) -> dict[int, int]:
    """Send ``payloads`` to ``stream``, each to the partition of its ``user_id``.

    A record whose user id cannot be read (malformed JSON, missing or null user_id)
    goes to partition 0. Within a partition, records keep their order. Returns the
    number of records sent per partition. ``joined``, if given, must be
    ``b"\\n".join(payloads)`` (a file's chunk as read), which spares joining them.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    if not payloads:
        return {}
    if joined is None:
        joined = b"\n".join(payloads)
    parts = framing.partitions_of_records(payloads, partitions, joined)
    # Bulk framing: the framed lines are the payloads themselves, each followed by "\n",
    # once the few that need escaping (blank, oversized...) are escaped in place.
    lines = _lines_to_frame(payloads, joined, max_record_bytes)
    # Partition numbers fit 16 bits in practice: NumPy's stable sort is then a radix
    # sort, ~8x faster than on 64-bit keys.
    order = np.argsort(parts.astype(np.uint16) if partitions <= 1 << 16 else parts, kind="stable")
    sorted_parts = parts[order]
    bounds = np.flatnonzero(np.diff(sorted_parts)) + 1
    starts = np.concatenate([[0], bounds]).tolist()
    ends = [*bounds.tolist(), len(order)]
    # Gathering through an object array keeps the per-record work in C.
    items = np.empty(len(payloads), dtype=object)
    items[:] = list(payloads) if lines is None else lines
    sent: dict[int, int] = {}
    for lo, hi in zip(starts, ends, strict=True):
        group: list[bytes] = items[order[lo:hi]].tolist()
        part = int(sorted_parts[lo])
        if lines is None:
            framed = framing.frame(group, max_record_bytes)
        else:
            group.append(b"")  # the last line's "\n", without copying the joined lines
            framed = b"\n".join(group)
        producer.send_framed(stream, part, framed, hi - lo)
        sent[part] = hi - lo
    return sent


def user_ids(payloads: Sequence[bytes], joined: bytes | None = None) -> pl.Series:
    """The ``user_id`` of each payload (null when unreadable), as a String Series:
    :func:`adpulse.transport.framing.user_id_of` of each, read in one vectorized call
    (``joined``, if given, must be ``b"\\n".join(payloads)``)."""
    keys = framing.user_id_keys(payloads, joined)
    return pl.Series(
        PARTITION_KEY, [None if k is None else k.decode() for k in keys], dtype=pl.String
    )


def _lines_to_frame(
    payloads: Sequence[bytes], joined: bytes, max_record_bytes: int
) -> list[bytes] | None:
    """The payloads as log lines without their ``\\n``: the payloads themselves, but
    those that :func:`framing.needs_escape` escaped (found without a per-record test);
    None when a payload holds a line break (then each is framed on its own)."""
    if framing.count_lines(joined) != len(payloads) - 1 or b"\r" in joined:
        return None  # a payload holds a line break
    # One-byte searches (memchr) and one pass over the lengths: no payload to escape
    # (none empty, none too large, none starting with the escape byte) is the common case.
    starts_escaped = b"\x00" in joined and (joined.startswith(b"\x00") or b"\n\x00" in joined)
    if not starts_escaped:
        sizes = list(map(len, payloads))
        if min(sizes) > 0 and max(sizes) <= max_record_bytes:
            return list(payloads)
    lengths = np.fromiter(map(len, payloads), dtype=np.int64, count=len(payloads))
    escape = (lengths == 0) | (lengths > max_record_bytes)
    if starts_escaped:
        starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
        at = joined.find(b"\n\x00")
        escape[0] |= joined.startswith(b"\x00")
        while at >= 0:
            escape[np.searchsorted(starts, at + 1)] = True
            at = joined.find(b"\n\x00", at + 1)
    if not escape.any():
        return list(payloads)
    lines = list(payloads)
    for i in np.flatnonzero(escape).tolist():
        lines[i] = framing.frame_one(lines[i], max_record_bytes)[:-1]
    return lines


def replay_directory(
    directory: Path | str,
    producer: Producer,
    partitions: int,
    rate: float | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[Stream, int]:
    """Publish every stream file of ``directory``; returns the records sent per stream.

    The streams advance together: chunks are sized in proportion to their file
    (``chunk_bytes`` for the largest) and the next one always comes from the file that
    is least far through, so clicks are not all sent before impressions.
    ``rate`` throttles to that many records per second overall (``None``: full speed).
    ``on_progress(records, file_bytes)`` follows each send: the records sent so far and
    the bytes of the files (on disk, compressed or not) read so far, whose total is
    their sizes: a progress bar needs no first pass to count lines.
    ``stop``, when set, ends the replay after the send in progress (a signal stopping
    the command); the counts then say how far it got. ``clock`` and ``sleep`` pace
    the throttle (tests pass a fake clock).
    """
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be positive (records per second), got {rate}")
    files = iter_stream_files(directory)
    if not files:
        raise FileNotFoundError(
            f"no stream files in {directory}: expected some of "
            + ", ".join(f"{s.value}.jsonl[.gz]" for s in Stream)
        )
    # Chunks proportional to file sizes: each step moves every stream by about the same
    # share of its file, so no stream runs ahead by a whole small file at once.
    sizes = {s: path.stat().st_size for s, path in files.items()}
    largest = max(1, *sizes.values())
    readers = {
        s: LineReader(path, max(_MIN_CHUNK_BYTES, chunk_bytes * sizes[s] // largest))
        for s, path in files.items()
    }
    chunks = {s: iter(reader) for s, reader in readers.items()}
    sent = dict.fromkeys(files, 0)
    total = 0
    began = clock()
    slice_records = max(1, int(rate * _THROTTLE_SLICE_SECONDS)) if rate else None
    while chunks and not (stop is not None and stop.is_set()):
        stream = min(chunks, key=lambda s: (readers[s].progress, list(Stream).index(s)))
        lines = next(chunks[stream], None)
        if lines is None:
            del chunks[stream]
            continue
        step = slice_records or len(lines)
        for lo in range(0, len(lines), step):
            if stop is not None and stop.is_set():
                break
            batch = lines[lo : lo + step]
            # A whole chunk goes with its lines as the file held them (no second join).
            joined = lines.joined if len(batch) == len(lines) else None
            publish(producer, stream, batch, partitions, joined=joined)
            sent[stream] += len(batch)
            total += len(batch)
            if rate:
                ahead = total / rate - (clock() - began)
                if ahead > 0 and stop is not None:
                    stop.wait(ahead)
                elif ahead > 0:
                    sleep(ahead)
            if on_progress is not None:
                on_progress(total, sum(reader.consumed for reader in readers.values()))
    producer.flush()
    return sent
