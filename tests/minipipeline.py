"""A small pipeline over the in-memory transport and a warehouse (DuckDB by default), for
tests."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path

import orjson

from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.processor.pipeline import Processor
from adpulse.storage.dimensions import read_dimension_csv
from adpulse.storage.warehouse.base import Warehouse
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse
from adpulse.transport.memory import InMemoryTransport


class MiniPipeline:
    """Send records, run the processor until caught up, read the warehouse."""

    def __init__(
        self,
        home: Path,
        partitions: int = 2,
        warehouse: Warehouse | None = None,
        **settings: object,
    ) -> None:
        """``warehouse``: one with its tables created (default: a DuckDB file in ``home``)."""
        self.settings = Settings(home=home, partitions=partitions, **settings)  # type: ignore[arg-type]
        self.transport = InMemoryTransport(partitions)
        self.producer = self.transport.producer()
        if warehouse is None:
            warehouse = DuckDBWarehouse(home / "warehouse.duckdb")
            warehouse.create_schema()
        self.warehouse = warehouse
        self.processor: Processor | None = None

    def load_dims(self, *paths: Path, effective_from: datetime = datetime(1970, 1, 1)) -> None:
        for path in paths:
            kind, rows = read_dimension_csv(path)
            self.warehouse.load_dimension(kind, rows, effective_from)

    def send(self, stream: Stream, records: Iterable[bytes | Mapping[str, object]]) -> None:
        payloads = [r if isinstance(r, bytes) else orjson.dumps(r) for r in records]
        keys = []
        for p in payloads:
            try:
                keys.append(str(orjson.loads(p)["user_id"]))
            except Exception:
                keys.append(None)
        self.producer.send(stream, payloads, keys)

    def run(self) -> None:
        if self.processor is None:
            self.processor = Processor(self.settings, self.transport, self.warehouse)
        self.processor.run(threading.Event(), until_caught_up=True)

    def rows(self, sql: str, params: list[object] | None = None) -> list[tuple[object, ...]]:
        return self.warehouse.query(sql, params or []).rows()
