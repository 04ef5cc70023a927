"""The Kinesis producer: framed lines of a partition cut into aggregates (whole lines,
at most :data:`~.layout.AGGREGATE_BYTES`), put in order, one aggregate per partition a
request, failed records retried.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING

from adpulse.contracts import Stream
from adpulse.transport.base import (
    Producer,
)
from adpulse.transport.kinesis.layout import (
    AGGREGATE_BYTES,
    PUT_RECORDS_MAX_BYTES,
    PUT_RECORDS_MAX_RECORDS,
    check_partition,
    partition_hash_key,
    partition_key,
)

if TYPE_CHECKING:
    from adpulse.transport.kinesis.transport import KinesisTransport


def aggregates(framed: bytes, limit: int = AGGREGATE_BYTES) -> Iterator[bytes]:
    """Cut framed lines into pieces of whole lines of at most ``limit`` bytes (a longer
    line alone)."""
    start = 0
    while start < len(framed):
        end = start + limit
        if end >= len(framed):
            yield framed[start:]
            return
        cut = framed.rfind(b"\n", start, end)
        if cut < 0:
            cut = framed.index(b"\n", start)
        yield framed[start : cut + 1]
        start = cut + 1


class KinesisProducer(Producer):
    """Puts framed lines as aggregates with PutRecords; durable when ``send`` returns."""

    _transport: KinesisTransport

    def __init__(self, transport: KinesisTransport) -> None:
        self._transport = transport
        self._pending: dict[Stream, dict[int, deque[bytes]]] = {}
        #: Records (aggregates) put, and failed records that were retried.
        self.records_put = 0
        self.records_retried = 0

    def _append(self, stream: Stream, partition: int, framed: bytes) -> None:
        check_partition(partition, self.partitions)
        queue = self._pending.setdefault(Stream(stream), {}).setdefault(partition, deque())
        queue.extend(aggregates(framed))

    def send(self, stream: Stream, payloads: Sequence[bytes], keys: Sequence[str | None]) -> None:
        super().send(stream, payloads, keys)
        self.flush()

    def send_framed(self, stream: Stream, partition: int, framed: bytes, records: int) -> None:
        super().send_framed(stream, partition, framed, records)
        self.flush()

    def flush(self) -> None:
        for stream in list(self._pending):
            self._put_all(stream, self._pending.pop(stream))

    def _put_all(self, stream: Stream, queues: dict[int, deque[bytes]]) -> None:
        """PutRecords until every queue is empty, at most one aggregate per partition in a
        request (the order argument of the module docstring)."""
        transport = self._transport
        name = transport.stream_name(stream)
        keys = {p: str(partition_hash_key(p, self.partitions)) for p in queues}
        backoff = transport.backoff()
        while any(queues.values()):
            batch: list[int] = []
            size = 0
            for partition, queue in queues.items():
                if not queue:
                    continue
                cost = len(queue[0]) + len(partition_key(partition))
                if batch and (
                    len(batch) == PUT_RECORDS_MAX_RECORDS or size + cost > PUT_RECORDS_MAX_BYTES
                ):
                    break
                batch.append(partition)
                size += cost
            entries = [
                {
                    "Data": queues[p][0],
                    "PartitionKey": partition_key(p),
                    "ExplicitHashKey": keys[p],
                }
                for p in batch
            ]
            response = transport.call(
                f"PutRecords to {name}",
                partial(transport.client.put_records, StreamName=name, Records=entries),
            )
            failed = 0
            for partition, result in zip(batch, response["Records"], strict=True):
                if result.get("ErrorCode"):
                    failed += 1
                else:
                    queues[partition].popleft()
            self.records_put += len(batch) - failed
            if failed:
                self.records_retried += failed
                backoff.wait(f"PutRecords to {name} ({failed} of {len(batch)} records failed)")
            else:
                backoff.reset()
