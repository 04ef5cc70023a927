"""The producer Lambda: the original's mock producers, into the Kinesis streams.

Two kinds of invocation:

- a scheduled one (EventBridge, ``{"events": N}``): the next window of the built-in
  generator's live feed, from the end of the previous window (or one schedule interval
  back, on a cold start) to now, about ``N`` events with the generator's faults
  (duplicates, late and malformed records), as ``adpulse demo`` produces them;
- a forwarded collector request (an API Gateway or function URL event: ``POST
  .../v1/events/{stream}`` with an NDJSON or JSON-array body, gzip allowed): its records,
  passed through as the HTTP collector passes them (:mod:`adpulse.sources.collector`),
  answered ``202 {"accepted": N}``.

Records are partitioned by ``user_id`` with the one producer code path
(:func:`adpulse.sources.producer.publish`); the Kinesis transport puts them.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from adpulse.aws.settings import function_settings
from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.runtime import open_log
from adpulse.sources.generator import EventGenerator, GeneratorConfig
from adpulse.sources.producer import publish

log = logging.getLogger(__name__)

#: Events a scheduled invocation generates when its event names none.
DEFAULT_EVENTS: Final = 1000
#: The window a cold-started producer generates: the template's schedule interval.
FIRST_WINDOW: Final = timedelta(minutes=1)
#: Generated dimensions and traffic: the demo's (``adpulse demo``), so that its
#: campaigns and users files describe the events (docs/aws.md, "Dimensions").
GENERATOR: Final = GeneratorConfig(seed=7, conversion_delay_median_seconds=90.0)


class ProducerFunction:
    """One execution environment's producer: the transport and a live generator feed."""

    def __init__(self, settings: Settings, config: GeneratorConfig = GENERATOR) -> None:
        self.settings = settings
        self.transport = open_log(settings)
        self.producer = self.transport.producer()
        # A feed of its own per environment (its start time): events of two environments,
        # or of a restarted one, are never taken for re-sends of each other.
        self.generator = EventGenerator(config, feed=time.time_ns() // 1_000_000)
        self.last_end: datetime | None = None

    def handle(self, event: Mapping[str, Any], now: datetime | None = None) -> dict[str, Any]:
        if "body" in event or "rawPath" in event or "path" in event:
            return self.forward(event)
        return self.generate(int(event.get("events", DEFAULT_EVENTS)), now)

    def generate(self, events: int, now: datetime | None = None) -> dict[str, Any]:
        """Put the feed's next window of about ``events`` events; the records per stream."""
        if events < 0:
            raise ValueError(f"events must be >= 0, got {events}")
        end = (now or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
        start = self.last_end or end - FIRST_WINDOW
        end = max(end, start + timedelta(milliseconds=1))
        chunk = self.generator.stream_chunk(start, end, events)
        sent = {}
        for stream in Stream:
            records = chunk.records[stream]
            publish(
                self.producer,
                stream,
                records,
                self.transport.partitions,
                self.transport.max_record_bytes,
            )
            sent[stream.value] = len(records)
        self.producer.flush()
        self.last_end = end
        log.info("generated %s to %s: %s", start, end, sent)
        return {"start": start.isoformat(), "end": end.isoformat(), "records": sent}

    def forward(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Put the records of a collector request; an HTTP answer as the collector's."""
        from adpulse.sources.collector import CollectorError, gunzip, split_records

        try:
            stream = _stream_of(event)
            headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
            body = event.get("body") or ""
            raw = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()
            limit = self.settings.collector_max_body_bytes
            if len(raw) > limit:
                raise CollectorError(
                    413, "body_too_large", f"the body is over {limit} bytes; send smaller batches"
                )
            if headers.get("content-encoding", "").strip().lower() == "gzip":
                raw = gunzip(raw, limit)
            records = split_records(raw, headers.get("content-type", ""))
            if len(records) > self.settings.collector_max_records:
                raise CollectorError(
                    413,
                    "too_many_records",
                    f"{len(records)} records in one request, over"
                    f" {self.settings.collector_max_records}; send smaller batches",
                )
        except CollectorError as exc:
            return _http(exc.status, {"error": exc.code, "detail": exc.detail})
        publish(
            self.producer,
            stream,
            records,
            self.transport.partitions,
            self.transport.max_record_bytes,
        )
        self.producer.flush()
        return _http(202, {"accepted": len(records)})

    def close(self) -> None:
        try:
            self.producer.close()
        finally:
            self.transport.close()


def _stream_of(event: Mapping[str, Any]) -> Stream:
    from adpulse.sources.collector import CollectorError

    path = str(event.get("rawPath") or event.get("path") or "")
    name = path.rstrip("/").rsplit("/", 1)[-1]
    try:
        return Stream(name)
    except ValueError:
        raise CollectorError(
            404,
            "unknown_stream",
            f"no stream {name!r} in the path {path!r}: POST to"
            f" /v1/events/{{{'|'.join(s.value for s in Stream)}}}",
        ) from None


def _http(status: int, body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(body),
    }


#: This execution environment's producer, kept between invocations.
_function: ProducerFunction | None = None


def handler(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """The Lambda entry point (``adpulse.aws.producer.handler``)."""
    global _function
    if _function is None:
        _function = ProducerFunction(function_settings())
    return _function.handle(event)


def reset() -> None:
    """Close this environment's producer (tests; the next invocation starts cold)."""
    global _function
    function, _function = _function, None
    if function is not None:
        function.close()
