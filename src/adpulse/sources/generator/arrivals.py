"""Rendered records with their arrival times, kept in arrival order.

Displaced, re-sent and malformed records arrive at other times than their events
happen; a session merges them with a stable sort and cuts them at each window's end.
Records are plain ``bytes`` in Python lists, so reordering copies runs of them as slices
rather than one record at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adpulse.sources.generator.sampling import EMPTY


@dataclass(frozen=True, slots=True)
class Arrivals:
    """Rendered records with their arrival times (ms)."""

    arrival: np.ndarray
    payload: list[bytes]

    @classmethod
    def empty(cls) -> Arrivals:
        return cls(EMPTY, [])

    @classmethod
    def concat(cls, *parts: Arrivals) -> Arrivals:
        return cls(
            np.concatenate([p.arrival for p in parts]),
            _join(parts),
        )

    def sorted(self) -> Arrivals:
        """By arrival; records arriving at the same time keep their order (stable)."""
        order = np.argsort(self.arrival, kind="stable")  # nearly sorted: ~linear
        return Arrivals(self.arrival[order], _permute(self.payload, order))

    def split(self, cut: int) -> tuple[Arrivals, Arrivals]:
        return (
            Arrivals(self.arrival[:cut], self.payload[:cut]),
            Arrivals(self.arrival[cut:], self.payload[cut:]),
        )


def _join(parts: tuple[Arrivals, ...]) -> list[bytes]:
    out: list[bytes] = []
    for part in parts:
        out += part.payload
    return out


def _permute(items: list[bytes], order: np.ndarray) -> list[bytes]:
    """``[items[i] for i in order]``, copying runs of consecutive indices as slices.

    Few records are displaced, so the order is mostly long runs: far fewer Python
    steps than one per record.
    """
    if len(order) == 0:
        return []
    breaks = np.flatnonzero(np.diff(order) != 1) + 1
    firsts = np.concatenate([[0], breaks])
    lengths = np.diff(np.append(firsts, len(order)))
    out: list[bytes] = []
    for first, length in zip(order[firsts].tolist(), lengths.tolist(), strict=True):
        out += items[first : first + length]
    return out
