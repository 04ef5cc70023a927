"""The consumer Lambda: a Kinesis event-source mapping's deliveries -> the processor.

Each invocation is one micro-batch: the delivery's records are decoded
(:mod:`adpulse.aws.delivery`), processed by the project's processor (decode -> validate
-> dedupe -> enrich -> attribute -> aggregate) and committed with their offsets in one
warehouse transaction, exactly as ``adpulse process`` does. Records at or below the
committed sequence number of their shard are skipped, so a retried delivery changes
nothing. When a commit fails (the warehouse is down), the answer lists the records not
committed in ``batchItemFailures`` and the mapping delivers them again.

The processor's state (dedupe keys, open clicks and conversions, watermarks) stays warm
in :data:`_function` across invocations of one execution environment. It is rebuilt
from the warehouse on a cold start, after a failure, and whenever the warehouse's
offsets are not the ones this environment last committed (another environment
committed meanwhile; the stack runs one at a time, see docs/aws.md). The cold start's
cost is logged (``cold start``) and measured in docs/aws.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

from adpulse.aws.delivery import DeliveryTransport, decode_event
from adpulse.aws.settings import function_settings
from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.processor.pipeline import BatchReport
from adpulse.runtime import open_runtime, processor_for
from adpulse.transport.kinesis import KinesisTransport, shard_partitions

log = logging.getLogger(__name__)


class ConsumerFunction:
    """One execution environment's consumer: the opened runtime and a warm processor."""

    def __init__(
        self, settings: Settings, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        started = time.perf_counter()
        self._parts = ExitStack()
        try:
            self.runtime = self._parts.enter_context(open_runtime(settings))
            kinesis = self.runtime.transport
            if not isinstance(kinesis, KinesisTransport):
                raise ValueError(
                    f"the consumer Lambda reads Kinesis deliveries, but transport_url is"
                    f" {settings.transport_url!r}: set ADPULSE_TRANSPORT_URL to"
                    " kinesis://PREFIX?region=REGION of the streams its mappings read"
                )
            self.kinesis = kinesis
            opened = time.perf_counter()
            self.delivery = DeliveryTransport(
                kinesis.partitions, kinesis.max_record_bytes, self._lineage
            )
            self.processor = processor_for(self.runtime, clock=clock, transport=self.delivery)
        except BaseException:
            self._parts.close()
            raise
        done = time.perf_counter()
        #: Seconds the cold start took: opening transport and warehouse, then rebuilding
        #: the processor's state from the warehouse.
        self.cold_start = {"open": opened - started, "rebuild": done - opened}
        #: Set when an invocation failed: the state may be ahead of the warehouse, so
        #: the handler drops this environment's consumer and the next one starts cold.
        self.broken = False
        self.invocations = 0
        log.info(
            "cold start: opened the runtime in %.3f s, rebuilt the state in %.3f s",
            self.cold_start["open"],
            self.cold_start["rebuild"],
        )

    def _lineage(self, stream: Stream, partition: int, fresh: bool) -> list[str]:
        age = 0.0 if fresh else 60.0
        return [s.shard_id for s in self.kinesis.lineage(stream, partition, max_age=age)]

    def _foreign_partition(self, stream: Stream, shard_id: str) -> int:
        """Where records another application put in ``shard_id`` go: the lowest
        partition the shard holds (the Kinesis consumer's rule)."""
        for shard in self.kinesis.list_shards(stream, max_age=60.0):
            if shard.shard_id == shard_id:
                held = shard_partitions(
                    shard.starting_hash_key, shard.ending_hash_key, self.kinesis.partitions
                )
                if held:
                    return held[0]
        return 0

    def handle(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Process one delivery; the answer a Kinesis mapping with
        ``ReportBatchItemFailures`` expects."""
        self.invocations += 1
        records = decode_event(
            event, self.kinesis.prefix, self.kinesis.partitions, self._foreign_partition
        )
        if not records:
            return {"batchItemFailures": []}
        started: dict[tuple[Stream, int], str | None] = {}
        fresh = len(records)
        reports: list[BatchReport] = []
        try:
            self._catch_up()
            started = dict(self.processor.offsets)
            self.delivery.deliver(records)
            fresh = len(self.delivery.uncommitted(started))
            while (report := self.processor.run_once()) is not None:
                reports.append(report)
            settled = self.processor.settle()
            if settled is not None:
                reports.append(settled)
        except Exception as exc:  # noqa: BLE001 - answered as failed items, retried
            self.broken = True
            if self.delivery.records:  # delivered: what a commit acked is done
                failed = self.delivery.uncommitted(started)
            else:  # failed before: none of it is
                failed = [r.sequence_number for r in records]
            log.error(
                "%d of %d delivered records were not committed (%s: %s); the mapping"
                " delivers them again",
                len(failed),
                len(records),
                type(exc).__name__,
                exc,
                exc_info=True,
            )
            return {"batchItemFailures": [{"itemIdentifier": seq} for seq in failed]}
        finally:
            self.delivery.deliver([])
        log.info(
            "delivery of %d Kinesis records (%d committed before, skipped): %d events"
            " committed in %d batch(es)",
            len(records),
            len(records) - fresh,
            sum(r.records for r in reports),
            len(reports),
        )
        return {"batchItemFailures": []}

    def _catch_up(self) -> None:
        """Rebuild the state if the warehouse's offsets are not the ones this environment
        committed last (another environment committed since)."""
        mine = {k: v for k, v in self.processor.offsets.items() if v is not None}
        committed = {
            k: v
            for k, v in self.runtime.warehouse.load_offsets().items()
            if k[1] in self.processor.partitions
        }
        if committed != mine:
            log.info("the warehouse moved on since this environment's last commit; rebuilding")
            self.processor.recover()

    def close(self) -> None:
        """Close the processor and the runtime; after a failed invocation, the failure
        (already answered) is not raised again."""
        try:
            self.processor.close()
        except Exception:
            if not self.broken:
                raise
            log.debug("closing the consumer after its failure", exc_info=True)
        finally:
            self._parts.close()


#: This execution environment's consumer, kept warm between invocations.
_function: ConsumerFunction | None = None


def handler(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """The Lambda entry point (``adpulse.aws.consumer.handler``)."""
    global _function
    if _function is None:
        _function = ConsumerFunction(function_settings())
    function = _function
    try:
        return function.handle(event)
    finally:
        if function.broken:  # the next invocation starts cold
            _function = None
            try:
                function.close()
            except Exception:  # noqa: BLE001 - a broken connection; the answer stands
                log.warning("closing the failed consumer's runtime failed", exc_info=True)


def reset() -> None:
    """Close this environment's consumer (tests; the next invocation starts cold)."""
    global _function
    function, _function = _function, None
    if function is not None:
        function.close()
