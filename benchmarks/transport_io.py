"""Transport throughput: appends of 1 MB framed blocks, polls, and per-record send().

Run: ``python benchmarks/transport_io.py [--total-mb 512] [--dir DIR]`` for the embedded
log, or ``python benchmarks/transport_io.py --redis-url redis://127.0.0.1:6379/0
--total-mb 143 [--entry-bytes 0]`` for Redis Streams (1M records of 143 bytes; 64 KiB
of records per stream entry, or one per entry with 0; its keys are deleted afterwards).
Prints figures; it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from adpulse.contracts import Stream
from adpulse.transport.embedded import EmbeddedTransport

RECORD_BYTES = 150


def make_block(block_bytes: int) -> tuple[bytes, int]:
    """~block_bytes of 150-byte framed records (149 bytes of JSON + '\\n')."""
    template = '{"ad_id":%6d,"user_id":"user_%06d","click_timestamp":"2024-01-01 00:00:00",'
    records = []
    for i in range(block_bytes // RECORD_BYTES):
        head = (template % (i % 1000, i)).encode()
        pad = RECORD_BYTES - 1 - len(head) - len(b'"p":""}')
        records.append(head + b'"p":"' + b"x" * pad + b'"}\n')
    assert all(len(r) == RECORD_BYTES for r in records)
    return b"".join(records), len(records)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--total-mb", type=int, default=512)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--redis-url", default=None, help="Measure Redis Streams instead.")
    parser.add_argument(
        "--entry-bytes",
        type=int,
        default=64 * 1024,
        help="Redis: bytes of records packed per stream entry (0: one record per entry).",
    )
    args = parser.parse_args()
    if args.redis_url:
        run_redis(args.redis_url, args.total_mb, args.partitions, args.entry_bytes)
        return
    root = Path(tempfile.mkdtemp(dir=args.dir, prefix="adpulse-bench-"))
    try:
        run(root, args.total_mb, args.partitions)
    finally:
        shutil.rmtree(root)


def run(root: Path, total_mb: int, partitions: int) -> None:
    block, per_block = make_block(1 << 20)
    blocks = total_mb * (1 << 20) // len(block)
    transport = EmbeddedTransport(root / "log", partitions)
    producer = transport.producer()

    started = time.perf_counter()
    for i in range(blocks):
        producer.send_framed(Stream.CLICKS, i % partitions, block, per_block)
    appended = time.perf_counter() - started
    producer.flush()
    total_bytes = blocks * len(block)
    total_records = blocks * per_block
    report("append 1 MB blocks", total_bytes, total_records, appended)

    synced = EmbeddedTransport(root / "log", partitions, fsync=True).producer()
    started = time.perf_counter()
    for i in range(min(blocks, 64)):
        synced.send_framed(Stream.IMPRESSIONS, i % partitions, block, per_block)
    synced.flush()
    report(
        "append 1 MB blocks + fsync at end",
        min(blocks, 64) * len(block),
        min(blocks, 64) * per_block,
        time.perf_counter() - started,
    )
    synced.close()

    for max_bytes in (32 << 20, 8 << 20, 1 << 20):
        consumer = transport.consumer()
        started = time.perf_counter()
        read_bytes = read_records = 0
        for partition in range(partitions):
            after: str | None = None
            while (chunk := consumer.poll(Stream.CLICKS, partition, after, max_bytes)) is not None:
                read_bytes += len(chunk.data)
                read_records += chunk.records
                after = chunk.end_offset
        elapsed = time.perf_counter() - started
        assert (read_bytes, read_records) == (total_bytes, total_records)
        report(
            f"poll max_bytes={max_bytes >> 20} MB (page cache)", read_bytes, read_records, elapsed
        )
        consumer.close()

    consumer = transport.consumer()
    idle_polls = 100_000
    ends = [str(consumer.lag_bytes(Stream.CLICKS, p, None)) for p in range(partitions)]
    started = time.perf_counter()
    for i in range(idle_polls):
        assert consumer.poll(Stream.CLICKS, i % partitions, ends[i % partitions], 1 << 20) is None
    elapsed = time.perf_counter() - started
    print(f"{'idle poll (nothing new)':40s} {elapsed / idle_polls * 1e6:8.2f} us/poll")

    payloads = [block[i * RECORD_BYTES : (i + 1) * RECORD_BYTES - 1] for i in range(per_block)]
    keys = [f"user_{i:06d}" for i in range(per_block)]
    started = time.perf_counter()
    rounds = 20
    for _ in range(rounds):
        producer.send(Stream.CONVERSIONS, payloads, keys)
    report(
        "send() per-record framing + hashing",
        rounds * per_block * RECORD_BYTES,
        rounds * per_block,
        time.perf_counter() - started,
    )
    transport.close()


def run_redis(url: str, total_mb: int, partitions: int, entry_bytes: int) -> None:
    """Produce (pipelined XADDs), then poll and ack each chunk, through Redis Streams.

    Besides wall-clock rates it prints the CPU seconds of this client and of the Redis
    server per phase: on a shared, noisy machine those compare runs better than rates.
    """
    import uuid

    from adpulse.transport.redis_streams import RedisStreamsTransport

    block, per_block = make_block(1 << 20)
    blocks = max(1, total_mb * (1 << 20) // len(block))
    prefix = f"adpulse-bench-{uuid.uuid4().hex[:12]}"
    transport = RedisStreamsTransport(url, partitions, prefix=prefix, entry_bytes=entry_bytes)

    def server_cpu() -> float:
        info = transport.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def phase(name: str, nbytes: int, records: int, since: tuple[float, float, float]) -> None:
        started, client, server = since
        report(name, nbytes, records, time.perf_counter() - started)
        print(
            f"{'':40s} cpu: client {time.process_time() - client:.2f} s, "
            f"redis server {server_cpu() - server:.2f} s"
        )

    try:
        producer = transport.producer()
        since = (time.perf_counter(), time.process_time(), server_cpu())
        for i in range(blocks):
            producer.send_framed(Stream.CLICKS, i % partitions, block, per_block)
        phase("redis: produce 1 MB blocks", blocks * len(block), blocks * per_block, since)
        consumer = transport.consumer()
        since = (time.perf_counter(), time.process_time(), server_cpu())
        read_bytes = read_records = 0
        for partition in range(partitions):
            after: str | None = None
            while (chunk := consumer.poll(Stream.CLICKS, partition, after, 8 << 20)) is not None:
                read_bytes += len(chunk.data)
                read_records += chunk.records
                after = chunk.end_offset
                # As the processor does after each commit: XACK (consumer groups) + trim.
                consumer.ack(Stream.CLICKS, partition, after)
        phase("redis: poll max_bytes=8 MB + ack", read_bytes, read_records, since)
        assert read_records == blocks * per_block
    finally:
        keys = list(transport.client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            transport.client.delete(*keys)
        transport.close()


def report(name: str, nbytes: int, records: int, seconds: float) -> None:
    print(
        f"{name:40s} {nbytes / seconds / 1e6:9.1f} MB/s {records / seconds / 1e6:8.2f} M records/s"
        f"  ({nbytes / 1e6:.0f} MB in {seconds:.3f} s)"
    )


if __name__ == "__main__":
    main()
