"""The Kinesis transport: the streams of a prefix (created when missing), the boto3
client with retries, shard listings and lineages; it hands out producers and consumers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from adpulse.contracts import DEFAULT_MAX_RECORD_BYTES, Stream
from adpulse.transport.base import (
    Transport,
)
from adpulse.transport.kinesis.consumer import KinesisConsumer
from adpulse.transport.kinesis.layout import (
    LIST_INTERVAL_SECONDS,
    MAX_RECORD_BYTES_LIMIT,
    PREFIX_PATTERN,
    READ_INTERVAL_SECONDS,
    ShardInfo,
    parse_offset,
    partition_lineage,
    stream_name,
)
from adpulse.transport.kinesis.producer import KinesisProducer
from adpulse.transport.kinesis.retry import THROTTLED, Backoff, error_code

log = logging.getLogger(__name__)

T = TypeVar("T")


class KinesisTransport(Transport):
    """A partitioned log on three Kinesis streams (see the module docstring).

    ``partitions``: the processor's partition count (independent of the shard count);
    ``shards``: the shard count of streams this creates; ``client``: a boto3 Kinesis
    client (made from ``region`` and ``endpoint_url`` when ``None``).
    """

    def __init__(
        self,
        prefix: str,
        partitions: int,
        *,
        region: str | None = None,
        shards: int | None = None,
        endpoint_url: str | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        retry_seconds: float = 60.0,
        connect_seconds: float = 10.0,
        read_interval: float = READ_INTERVAL_SECONDS,
        client: Any = None,
        create: bool = True,
    ) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, got {partitions}")
        if not PREFIX_PATTERN.match(prefix):
            raise ValueError(
                f"stream prefix {prefix!r} cannot name Kinesis streams: use 1 to 115 letters, "
                "digits, '_', '.' or '-'"
            )
        if max_record_bytes > MAX_RECORD_BYTES_LIMIT:
            raise ValueError(
                f"max_record_bytes {max_record_bytes} is too large for Kinesis: a framed "
                f"record must fit one 1 MiB Kinesis record; set it to at most "
                f"{MAX_RECORD_BYTES_LIMIT}"
            )
        self.prefix = prefix
        self.partitions = partitions
        self.shards = shards if shards is not None else partitions
        if self.shards < 1:
            raise ValueError(f"shards must be at least 1, got {self.shards}")
        self.max_record_bytes = max_record_bytes
        self.retry_seconds = retry_seconds
        self.read_interval = read_interval
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client(
                "kinesis",
                region_name=region,
                endpoint_url=endpoint_url,
                config=Config(
                    # Our own backoff (with jitter and a deadline) is the only retry loop.
                    retries={"max_attempts": 1, "mode": "standard"},
                    connect_timeout=connect_seconds,
                    read_timeout=max(connect_seconds, 30.0),
                ),
            )
        self.client = client
        self._listings: dict[Stream, tuple[float, list[ShardInfo]]] = {}
        if create:
            self.ensure_streams()

    def stream_name(self, stream: Stream) -> str:
        return stream_name(self.prefix, stream)

    def backoff(self) -> Backoff:
        return Backoff(deadline_seconds=self.retry_seconds)

    def call(self, what: str, operation: Callable[[], T]) -> T:
        """Run one API call, retrying throttling and lost connections with backoff."""
        from botocore.exceptions import ClientError, ConnectionError, ReadTimeoutError

        backoff = self.backoff()
        while True:
            try:
                return operation()
            except ClientError as exc:
                if error_code(exc) not in THROTTLED:
                    raise
                log.debug("%s throttled (%s); backing off", what, error_code(exc))
                backoff.wait(what)
            except (ConnectionError, ReadTimeoutError) as exc:
                log.warning("%s: %s; retrying", what, exc)
                backoff.wait(what)

    def ensure_streams(self) -> None:
        """Create the missing streams with ``shards`` shards; wait until all are ACTIVE."""
        from botocore.exceptions import ClientError

        deadline = time.monotonic() + max(self.retry_seconds, 30.0)
        for stream in Stream:
            name = self.stream_name(stream)
            while True:
                try:
                    summary = self.call(
                        f"describing {name}",
                        partial(self.client.describe_stream_summary, StreamName=name),
                    )
                except ClientError as exc:
                    if error_code(exc) != "ResourceNotFoundException":
                        raise
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"Kinesis stream {name} was created but is not found; check it "
                            "in the AWS console and retry"
                        ) from exc
                    self._create(name)
                    time.sleep(0.1)
                    continue
                status = summary["StreamDescriptionSummary"]["StreamStatus"]
                if status in ("ACTIVE", "UPDATING"):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"Kinesis stream {name} is still {status}; wait and retry, or check "
                        "it in the AWS console"
                    )
                time.sleep(0.5)

    def _create(self, name: str) -> None:
        """CreateStream (only for a missing stream: existing ones need no such right)."""
        from botocore.exceptions import ClientError

        try:
            self.call(
                f"creating {name}",
                partial(self.client.create_stream, StreamName=name, ShardCount=self.shards),
            )
            log.info("created Kinesis stream %s with %d shards", name, self.shards)
        except ClientError as exc:
            if error_code(exc) != "ResourceInUseException":  # created meanwhile
                raise

    def list_shards(self, stream: Stream, *, max_age: float = 0.0) -> list[ShardInfo]:
        """Every shard of the stream (open and closed), re-listed if older than ``max_age``."""
        stream = Stream(stream)
        cached = self._listings.get(stream)
        now = time.monotonic()
        if cached is not None and now - cached[0] <= max_age:
            return cached[1]
        shards: list[ShardInfo] = []
        token: str | None = None
        name = self.stream_name(stream)
        while True:
            kwargs: dict[str, Any] = {"NextToken": token} if token else {"StreamName": name}
            page = self.call(
                f"listing the shards of {name}",
                partial(self.client.list_shards, **kwargs),
            )
            shards.extend(ShardInfo.from_api(s) for s in page.get("Shards", []))
            token = page.get("NextToken")
            if not token:
                break
        self._listings[stream] = (now, shards)
        return shards

    def lineage(self, stream: Stream, partition: int, *, max_age: float = 0.0) -> list[ShardInfo]:
        """The shards of ``partition`` in ``stream``, oldest first (:func:`partition_lineage`)."""
        return partition_lineage(
            self.list_shards(stream, max_age=max_age), partition, self.partitions
        )

    def shard_report(
        self,
        committed: Mapping[tuple[Stream, int], str | None],
        owners: Mapping[int, str] | None = None,
    ) -> list[dict[str, Any]]:
        """One row per stream and partition: the shard its committed offset is in (the
        one its owner reads next), the shard's state, the partition's owner (``owners``:
        partition -> worker, from the leases) and the iterator age there
        (``millis_behind_latest``: how far the committed position trails the shard's
        newest record, by one GetRecords of a single record; ``None`` when unknown)."""
        rows: list[dict[str, Any]] = []
        for stream in Stream:
            for partition in range(self.partitions):
                offset = committed.get((stream, partition))
                lineage = self.lineage(stream, partition, max_age=LIST_INTERVAL_SECONDS)
                kwargs: dict[str, Any] = {"StreamName": self.stream_name(stream)}
                shard: ShardInfo | None = lineage[0] if lineage else None
                if offset is not None:
                    parsed = parse_offset(offset, stream, partition)
                    shard = next((s for s in lineage if s.shard_id == parsed.shard_id), None)
                    kwargs["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
                    kwargs["StartingSequenceNumber"] = str(parsed.sequence_number)
                else:
                    kwargs["ShardIteratorType"] = "TRIM_HORIZON"
                behind: int | None = None
                if shard is not None:
                    kwargs["ShardId"] = shard.shard_id
                    what = f"the iterator age of {kwargs['StreamName']} {shard.shard_id}"
                    iterator = self.call(what, partial(self.client.get_shard_iterator, **kwargs))
                    answer = self.call(
                        what,
                        partial(
                            self.client.get_records,
                            ShardIterator=iterator["ShardIterator"],
                            Limit=1,
                        ),
                    )
                    behind = int(answer.get("MillisBehindLatest", 0))
                rows.append(
                    {
                        "stream": stream.value,
                        "partition": partition,
                        "shard": None if shard is None else shard.shard_id,
                        "state": None if shard is None else ("closed" if shard.closed else "open"),
                        "owner": (owners or {}).get(partition),
                        "committed_offset": offset,
                        "millis_behind_latest": behind,
                    }
                )
        return rows

    def producer(self) -> KinesisProducer:
        return KinesisProducer(self)

    def consumer(self) -> KinesisConsumer:
        return KinesisConsumer(self)

    def delete_streams(self) -> None:
        """Delete the three streams (for tests and benchmarks that made them)."""
        for stream in Stream:
            try:
                self.client.delete_stream(
                    StreamName=self.stream_name(stream), EnforceConsumerDeletion=True
                )
            except Exception as exc:  # noqa: BLE001 - best effort clean-up
                log.debug("could not delete %s: %s", self.stream_name(stream), exc)

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            close()


def open_kinesis_transport(
    url: str,
    partitions: int,
    max_record_bytes: int,
    *,
    retry_seconds: float = 60.0,
    connect_seconds: float = 10.0,
    setting: str = "transport_url",
    create: bool = True,
) -> KinesisTransport:
    """Open ``kinesis://PREFIX?region=REGION&shards=N&endpoint_url=URL``; one clear error
    naming the setting when the URL is malformed."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    known = {"region", "shards", "endpoint_url", "read_interval"}
    unknown = sorted(set(query) - known)
    form = "kinesis://PREFIX?region=REGION&shards=N[&endpoint_url=URL]"
    if parts.scheme != "kinesis" or not parts.netloc or parts.path not in ("", "/") or unknown:
        raise ValueError(
            f"Invalid `{setting}` {url!r}: expected {form}"
            + (f" (unknown parameters: {', '.join(unknown)})" if unknown else "")
        )
    try:
        shards = int(query["shards"]) if "shards" in query else None
        read_interval = float(query.get("read_interval", READ_INTERVAL_SECONDS))
    except ValueError:
        raise ValueError(f"Invalid `{setting}` {url!r}: shards must be a whole number") from None
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return KinesisTransport(
            parts.netloc,
            partitions,
            region=query.get("region"),
            shards=shards,
            endpoint_url=query.get("endpoint_url"),
            max_record_bytes=max_record_bytes,
            retry_seconds=retry_seconds,
            connect_seconds=connect_seconds,
            read_interval=read_interval,
            create=create,
        )
    except (BotoCoreError, ClientError, TimeoutError) as exc:
        raise ValueError(
            f"The Kinesis streams of `{setting}` ({url}) cannot be opened: "
            f"{str(exc).rstrip('.')}. Give the "
            "region (?region=, or AWS_REGION), AWS credentials (AWS_PROFILE, or "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or an instance role) allowed "
            f"kinesis:CreateStream/DescribeStreamSummary/ListShards/PutRecords/GetRecords, "
            f"or fix `{setting}` (ADPULSE_{setting.upper()})."
        ) from exc
