"""A realistic, deterministic, vectorized generator of ad events and dimensions.

It plays the original's mock Lambda producers, with the faults real streams have:

- dimensions: dozens of campaigns with flights, hundreds of ads, thousands of users
  (the original's sample ads 1001-1003 and users U1234, U5678, U9101 always included,
  with their exact sample values);
- events: Zipf-like ad popularity, skewed user activity, a US city and platform mix, a
  daily traffic curve; a click follows an impression of the same user and ad seconds
  later; a conversion follows a real click of the same user and ad after a heavy-tailed
  delay (minutes to days), plus a share of conversions without any click (unattributed);
- faults, each at an exact rate: re-sent duplicates, out-of-order and late arrival,
  malformed records of many kinds, ISO-8601 timestamps with an offset.

Everything is NumPy/Polars over whole columns: the JSON text of the records is built
by string-concatenation expressions, never by a per-record ``json.dumps`` (only the few
malformed records are built one by one).

Two ways to use it, both deterministic for a given seed and call sequence:
:meth:`EventGenerator.generate` (a bounded data set over ``[start, end)``) and
:meth:`EventGenerator.stream_chunk` (consecutive windows for a live feed; the ``feed``
number picks one of the seed's feeds, each with event ids of its own).

The package, one topic per module, in the order data flows:

- :mod:`.catalog`: the fixed vocabulary (cities, platforms, campaign themes, sample
  rows, traffic per hour);
- :mod:`.config`: :class:`GeneratorConfig`, the knobs;
- :mod:`.world`: the dimensions and the static tables events draw from;
- :mod:`.session`: one data set or live feed, window by window (events, rendering,
  fault injection), with :mod:`.arrivals` keeping records in arrival order;
- :mod:`.malformed`: the malformed kinds, their expected dead-letter reasons, and how
  each record is made;
- :mod:`.output`: :class:`GeneratedEvents` and :class:`StreamCounts`, what a call returns;
- :mod:`.sampling` and :mod:`.clock`: weighted draws, traffic times, millisecond time;
- :mod:`.history`: :func:`history_plan`, a demo's history as dense as live just before
  it and thinner further back;
- :mod:`.event_generator`: :class:`EventGenerator`, the entry point.

This module exports the public names; the modules above are the package's own.
"""

from adpulse.sources.generator.config import GeneratorConfig
from adpulse.sources.generator.event_generator import EventGenerator
from adpulse.sources.generator.history import HistoryTier, history_plan
from adpulse.sources.generator.malformed import EXPECTED_REASON, MalformedKind, malformed_kinds
from adpulse.sources.generator.output import GeneratedEvents, StreamCounts

__all__ = [
    "EXPECTED_REASON",
    "EventGenerator",
    "GeneratedEvents",
    "GeneratorConfig",
    "HistoryTier",
    "MalformedKind",
    "StreamCounts",
    "history_plan",
    "malformed_kinds",
]
