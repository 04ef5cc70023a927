"""Small numeric draws the world and the sessions share.

Weighted index draws (an inverse-transform CDF for small tables, Walker's alias table for
large ones drawn from often), "mostly the usual value" draws, and event times that
follow the daily traffic curve, sorted in O(n). All take an explicit
``numpy.random.Generator``: the call order fixes the bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import numpy as np

from adpulse.sources.generator.catalog import DIURNAL
from adpulse.sources.generator.clock import HOUR_MS

#: No indices (or times): an empty ``int64`` array.
EMPTY: Final = np.zeros(0, dtype=np.int64)


def cdf(weights: Iterable[float] | np.ndarray) -> np.ndarray:
    """The cumulative distribution of ``weights``, normalised to end at 1 (for :func:`draw`)."""
    w = np.asarray(weights, dtype=np.float64)
    cdf = np.cumsum(w)
    return cdf / cdf[-1]


def draw(rng: np.random.Generator, cdf: np.ndarray, n: int) -> np.ndarray:
    """``n`` indices drawn with the probabilities of ``cdf`` (inverse transform)."""
    idx = np.searchsorted(cdf, rng.random(n), side="right")
    return np.minimum(idx, len(cdf) - 1).astype(np.int64)


def mostly(
    rng: np.random.Generator, usual: np.ndarray, share: float, cdf: np.ndarray
) -> np.ndarray:
    """``usual``, except a ``1 - share`` of the entries drawn afresh from ``cdf``."""
    out = usual.astype(np.uint8)
    other = np.flatnonzero(rng.random(len(out)) >= share)
    out[other] = draw(rng, cdf, len(other))
    return out


@dataclass(frozen=True, slots=True)
class Alias:
    """Walker's alias table: O(1) weighted draws (a binary search per draw is slower)."""

    prob: np.ndarray
    alias: np.ndarray
    index: np.ndarray  # the entries with a positive weight; draws return these

    @classmethod
    def build(cls, weights: np.ndarray) -> Alias:
        index = np.flatnonzero(np.asarray(weights) > 0)
        k = len(index)
        w = np.asarray(weights, dtype=np.float64)[index]
        scaled = (w * (k / w.sum())).tolist()
        prob = [1.0] * k
        alias = list(range(k))
        small = [i for i, p in enumerate(scaled) if p < 1.0]
        large = [i for i, p in enumerate(scaled) if p >= 1.0]
        while small and large:
            lo, hi = small.pop(), large.pop()
            prob[lo], alias[lo] = scaled[lo], hi
            scaled[hi] -= 1.0 - scaled[lo]
            (small if scaled[hi] < 1.0 else large).append(hi)
        # Entries left in either list have weight 1 up to rounding: they keep prob 1.
        return cls(np.array(prob), np.array(alias, dtype=np.int64), index.astype(np.int64))

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        pick = rng.integers(0, len(self.prob), n)
        return self.index[np.where(rng.random(n) < self.prob[pick], pick, self.alias[pick])]


def _hour_segments(
    start: int, end: int, curve: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hours = np.arange(start // HOUR_MS, (end - 1) // HOUR_MS + 1, dtype=np.int64)
    lo = np.maximum(hours * HOUR_MS, start)
    hi = np.minimum((hours + 1) * HOUR_MS, end)
    return lo, hi, (hi - lo) * (DIURNAL[hours % 24] if curve else 1.0)


def traffic_mass(start: int, end: int) -> float:
    """The traffic curve's weight of ``[start, end)`` (ms): how many events it gets."""
    return float(_hour_segments(start, end)[2].sum())


def traffic_times(
    rng: np.random.Generator, start: int, end: int, n: int, curve: bool = True
) -> np.ndarray:
    """``n`` sorted event times (ms) in ``[start, end)`` following the daily traffic curve
    (``curve=False``: evenly, as a live feed's short windows are).

    Sorted without sorting: a multinomial count per hour, then in each hour the sorted
    uniforms are cumulative sums of exponential gaps (a Poisson process), O(n).
    """
    if n == 0:
        return EMPTY
    lo, hi, weight = _hour_segments(start, end, curve)
    counts = rng.multinomial(n, weight / weight.sum())
    segment = np.repeat(np.arange(len(counts)), counts)
    gaps = rng.standard_exponential(n + len(counts))
    total = np.cumsum(gaps)
    last = np.cumsum(counts + 1) - 1  # each hour's extra gap closes its interval
    before = np.concatenate([[0.0], total[last[:-1]]])
    inside = np.ones(n + len(counts), dtype=bool)
    inside[last] = False
    fraction = (total[inside] - before[segment]) / (total[last] - before)[segment]
    return lo[segment] + (fraction * (hi - lo)[segment]).astype(np.int64)
