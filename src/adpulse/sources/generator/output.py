"""What a generation returns: the records per stream and what was injected into them.

:class:`GeneratedEvents` holds the raw payloads in arrival order; :class:`StreamCounts`
the exact numbers of events and of each fault, which tests and the CLI compare with what
the pipeline counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from adpulse.contracts import Stream
from adpulse.sources.generator.malformed import MalformedKind


@dataclass(frozen=True, slots=True)
class StreamCounts:
    """What was generated for one stream (over a data set, or in one streaming window).

    ``events`` counts distinct valid events; the records are those plus ``duplicates``
    plus the malformed ones. ``out_of_order`` and ``late`` count valid events displaced
    in arrival order. ``unattributed`` (conversions only) counts the valid conversions
    that have no click of the same user on the same ad before them.
    """

    events: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    late: int = 0
    malformed: Mapping[MalformedKind, int] = field(default_factory=dict)
    unattributed: int = 0

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())

    @property
    def records(self) -> int:
        """Records (payloads) these counts stand for: events + duplicates + malformed."""
        return self.events + self.duplicates + self.malformed_total

    def __add__(self, other: StreamCounts) -> StreamCounts:
        kinds = {**self.malformed}
        for kind, n in other.malformed.items():
            kinds[kind] = kinds.get(kind, 0) + n
        return StreamCounts(
            events=self.events + other.events,
            duplicates=self.duplicates + other.duplicates,
            out_of_order=self.out_of_order + other.out_of_order,
            late=self.late + other.late,
            malformed=kinds,
            unattributed=self.unattributed + other.unattributed,
        )


@dataclass(frozen=True, slots=True)
class GeneratedEvents:
    """Records per stream, as raw payloads in arrival order, with what was injected.

    For :meth:`EventGenerator.generate`, ``counts[s].records == len(records[s])``.
    For one :meth:`EventGenerator.stream_chunk` window, ``counts`` describe what was
    generated in the window, while ``records`` hold what *arrives* in it (displaced and
    duplicated records may arrive in a later window).
    """

    start: datetime
    end: datetime
    records: dict[Stream, list[bytes]]
    counts: dict[Stream, StreamCounts]

    @property
    def total_records(self) -> int:
        return sum(len(r) for r in self.records.values())

    @classmethod
    def concat(cls, parts: Iterable[GeneratedEvents]) -> GeneratedEvents:
        """Consecutive parts as one (records appended in order, counts summed)."""
        parts = list(parts)
        if not parts:
            raise ValueError("concat() needs at least one part")
        records: dict[Stream, list[bytes]] = {s: [] for s in Stream}
        counts = {s: StreamCounts() for s in Stream}
        for part in parts:
            for s in Stream:
                records[s].extend(part.records[s])
                counts[s] = counts[s] + part.counts[s]
        return cls(parts[0].start, parts[-1].end, records, counts)
