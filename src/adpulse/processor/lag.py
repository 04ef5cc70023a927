"""How far a running processor is behind the log: bytes, records and age.

One :class:`LagProbe` per process, owned by the composition root
(:meth:`adpulse.runtime.Runtime.lag_probe`): the alert monitor's evaluation thread and
the ``/metrics`` scrapes both read it, so the process keeps one consumer for the lag
whoever asks. Consumers are not thread-safe, so reads take a lock; a reading younger
than ``max_age`` seconds is handed out again instead of asking the log twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from adpulse.contracts import Stream
from adpulse.transport.base import Consumer, Lag, Transport

if TYPE_CHECKING:
    from adpulse.processor.pipeline import Processor


def processor_lag(processor: Processor, consumer: Consumer) -> Lag:
    """The lag of ``processor``'s partitions after its offsets, summed (:meth:`Lag.plus`)."""
    offsets = dict(processor.offsets)
    total = Lag(0, 0, 0.0)
    for stream in Stream:
        for partition in processor.partitions:
            total = total.plus(consumer.lag(stream, partition, offsets.get((stream, partition))))
    return total


class LagProbe:
    """The lag of the processor a process runs now (:meth:`follow`), from one consumer."""

    def __init__(
        self,
        max_age: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_age = max_age
        self.clock = clock
        self._source: Callable[[], Processor | None] = lambda: None
        self._consumer: Consumer | None = None
        self._consumer_of: Transport | None = None
        self._lock = threading.Lock()
        self._last: tuple[float, Processor, Lag] | None = None

    def follow(self, source: Callable[[], Processor | None]) -> None:
        """Measure the processor ``source()`` returns at each read (``None``: none runs,
        e.g. a worker holding no partition); replaces the last one followed."""
        with self._lock:
            self._source, self._last = source, None

    def read(self) -> Lag | None:
        """The followed processor's lag now (``None``: no processor); raises what the
        transport raises (a server down is the retriers' and alerts' business)."""
        with self._lock:
            processor = self._source()
            if processor is None:
                return None
            now = self.clock()
            if self._last is not None:
                when, measured, lag = self._last
                if measured is processor and now - when < self.max_age:
                    return lag
            if self._consumer is None or self._consumer_of is not processor.transport:
                # the processor's own log: a Lambda consumer's processor reads a delivery
                if self._consumer is not None:
                    self._consumer.close()
                self._consumer = processor.transport.consumer()
                self._consumer_of = processor.transport
            lag = processor_lag(processor, self._consumer)
            self._last = (now, processor, lag)
            return lag

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer, self._consumer_of = None, None
