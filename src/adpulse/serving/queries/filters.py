"""What to count: :class:`Filters`, their checks, and their SQL conditions."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from adpulse.contracts import AGE_BANDS, parse_time_argument

#: Longest accepted text filter value; longer ones are certainly not real values.
MAX_FILTER_LENGTH: Final = 200
AGE_BAND_LABELS: Final = tuple(label for _, _, label in AGE_BANDS)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: Filters on audience columns, which ``rollup_minute`` does not keep.
AUDIENCE_FILTERS: Final = ("gender", "age_band", "interest")


#: The filters whose values must be stored ones, and where :func:`known_values` finds them.
CHECKED_FILTERS: Final = ("campaign", "ad_id", "platform", "location", "gender", "interest")


class FilterError(ValueError):
    """A filter or option value that cannot be used; the message says which and why."""


class UnknownValueError(FilterError):
    """A filter value that matches no stored value; the message names the close ones."""


@dataclass(frozen=True, slots=True)
class Filters:
    """What to count: every field is optional, and given fields must all match.

    ``start``/``end`` bound event time, ``[start, end)``; naive datetimes are UTC,
    aware ones are converted to UTC. ``interest`` matches a row when it is one of the
    row's ``;``-separated interests. ``age_band`` is one of :data:`AGE_BAND_LABELS`.
    Values are checked on construction (:class:`FilterError`).
    """

    campaign: str | None = None
    ad_id: int | None = None
    start: datetime | None = None
    end: datetime | None = None
    platform: str | None = None
    location: str | None = None
    gender: str | None = None
    age_band: str | None = None
    interest: str | None = None

    def __post_init__(self) -> None:
        for name in ("campaign", "platform", "location", "gender", "age_band", "interest"):
            _check_text(name, getattr(self, name))
        if self.ad_id is not None and (
            isinstance(self.ad_id, bool)
            or not isinstance(self.ad_id, int)
            or not INT64_MIN <= self.ad_id <= INT64_MAX
        ):
            raise FilterError(f"ad_id must be a 64-bit integer, got {self.ad_id!r}")
        if self.age_band is not None and self.age_band not in AGE_BAND_LABELS:
            raise FilterError(
                f"age_band must be one of {', '.join(AGE_BAND_LABELS)}; got {self.age_band!r}"
            )
        if self.interest is not None and ";" in self.interest:
            raise FilterError("interest is a single interest; it cannot contain ';'")
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, datetime):
                raise FilterError(f"{name} must be a datetime, got {type(value).__name__}")
            if value.tzinfo is not None:
                # frozen: normalise once here so SQL always gets naive UTC like the tables
                object.__setattr__(self, name, value.astimezone(UTC).replace(tzinfo=None))
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise FilterError(f"start ({self.start}) must be before end ({self.end})")

    @classmethod
    def from_text(
        cls,
        *,
        campaign: str | None = None,
        ad_id: int | None = None,
        start: str | None = None,
        end: str | None = None,
        platform: str | None = None,
        location: str | None = None,
        gender: str | None = None,
        age_band: str | None = None,
        interest: str | None = None,
        start_name: str = "start",
        end_name: str = "end",
        max_range: timedelta | None = None,
    ) -> Filters:
        """Filters from what a user typed (the CLI's options, the API's parameters):
        ``start``/``end`` as text for :func:`parse_time`, named ``start_name`` and
        ``end_name`` in its messages; a range longer than ``max_range`` refused. Every
        refusal is a :class:`FilterError` whose message says what to change, which the
        CLI prints and the API answers with 400."""
        first = parse_time(start, start_name) if start else None
        last = parse_time(end, end_name) if end else None
        if (
            max_range is not None
            and first is not None
            and last is not None
            and last - first > max_range
        ):
            days = (last - first) / timedelta(days=1)
            raise FilterError(
                f"the time range is {days:g} days long; at most {max_range.days} days"
            )
        return cls(
            campaign=campaign,
            ad_id=ad_id,
            start=first,
            end=last,
            platform=platform,
            location=location,
            gender=gender,
            age_band=age_band,
            interest=interest,
        )

    @property
    def has_audience(self) -> bool:
        """Whether an audience filter is set (the rollups cannot answer it)."""
        return any(getattr(self, name) is not None for name in AUDIENCE_FILTERS)


class KnownValues:
    """The values each checked filter (:data:`CHECKED_FILTERS`) may take: the stored ones.

    :meth:`check` matches a filter's value exactly, else without regard to case (and
    gives the stored spelling), else refuses it naming the close matches. A filter with
    no stored values at all (nothing committed yet) is not checked: there is nothing to
    compare with, and its answers are empty either way.
    """

    def __init__(self, values: Mapping[str, Iterable[str | int]]) -> None:
        self._values = {name: frozenset(values.get(name, ())) for name in CHECKED_FILTERS}
        self._folded: dict[str, dict[str, list[str | int]]] = {}
        for name, known in self._values.items():
            folded: dict[str, list[str | int]] = {}
            for value in sorted(known, key=str):
                folded.setdefault(str(value).casefold(), []).append(value)
            self._folded[name] = folded

    def values(self, name: str) -> frozenset[str | int]:
        """The stored values of filter ``name``."""
        return self._values[name]

    def check(self, filters: Filters, names: Mapping[str, str] | None = None) -> Filters:
        """``filters`` with each checked value replaced by its stored spelling; an
        :class:`UnknownValueError` for a value that matches none, naming the filter as
        ``names`` says (e.g. ``--platform`` for the CLI; default: the field name)."""
        changes: dict[str, str | int] = {}
        for name in CHECKED_FILTERS:
            value = getattr(filters, name)
            if value is None or not self._values[name] or value in self._values[name]:
                continue
            same = self._folded[name].get(str(value).casefold(), [])
            if len(same) != 1:
                shown = (names or {}).get(name, name)
                raise UnknownValueError(self._unknown(name, shown, value, same))
            changes[name] = same[0]
        return replace(filters, **changes) if changes else filters  # type: ignore[arg-type]

    def _unknown(self, name: str, shown: str, value: object, same: list[str | int]) -> str:
        known = self._values[name]
        if same:  # two stored values differ only in case
            spellings = ", ".join(repr(v) for v in same)
            return f"{shown} {value!r} is ambiguous: the data holds {spellings}; give one exactly"
        close = difflib.get_close_matches(str(value).casefold(), list(self._folded[name]), n=3)
        found = [v for key in close for v in self._folded[name][key]]
        what = f"unknown {shown} {value!r}"
        if found:
            return f"{what}; did you mean {' or '.join(str(v) for v in found)}?"
        if len(known) <= 8:
            return f"{what}; the data holds {', '.join(sorted(str(v) for v in known))}"
        return f"{what}; none of the {len(known):,} stored values is close"


def parse_time(value: str, name: str) -> datetime:
    """A time argument: 'YYYY-MM-DD', 'YYYY-MM-DD HH:MM[:SS]' (UTC) or ISO-8601; a
    :class:`FilterError` for text that is no time or a time out of range."""
    parsed = _parsed_time(value, name)
    if isinstance(parsed, str):
        raise FilterError(parsed)
    return parsed


@functools.lru_cache(maxsize=4096)
def _parsed_time(value: str, name: str) -> datetime | str:
    """The time, or why it is refused (the events' own timestamp parser: one value at a
    time is slow there, and dashboards repeat the same few values, hence the cache)."""
    try:
        return parse_time_argument(value, name)
    except ValueError as exc:
        return str(exc)


def _check_text(name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise FilterError(f"{name} must be text, got {type(value).__name__}")
    if not value:
        raise FilterError(f"{name} must not be empty (leave it out to match everything)")
    if len(value) > MAX_FILTER_LENGTH:
        raise FilterError(f"{name} is {len(value)} characters long; at most {MAX_FILTER_LENGTH}")
    if any(ord(c) < 32 for c in value):
        # No stored value holds control characters, and PostgreSQL rejects NUL outright.
        raise FilterError(f"{name} must not contain control characters")


def check_int(name: str, value: object, low: int, high: int) -> None:
    """Raise :class:`FilterError` unless ``value`` is an int in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FilterError(f"{name} must be an integer from {low} to {high}; got {value!r}")


def conditions(
    filters: Filters, time_column: str, *, with_time: bool = True
) -> tuple[list[str], list[Any]]:
    """WHERE conditions and their bound values for ``filters`` (columns as in facts/rollups)."""
    found: list[str] = []
    params: list[Any] = []
    for column in ("campaign", "ad_id", "platform", "location", "gender", "age_band"):
        value = getattr(filters, column)
        if value is not None:
            found.append(f"{column} = ?")
            params.append(value)
    if filters.interest is not None:
        # ';a;b;' contains ';a;' exactly when a is one of the items: portable, no arrays.
        found.append("POSITION(? IN ';' || interests || ';') > 0")
        params.append(f";{filters.interest};")
    if with_time and filters.start is not None:
        found.append(f"{time_column} >= ?")
        params.append(filters.start)
    if with_time and filters.end is not None:
        found.append(f"{time_column} < ?")
        params.append(filters.end)
    return found, params


def where(found: Sequence[str]) -> str:
    """`` WHERE a AND b`` for the conditions ``found`` (nothing when there are none)."""
    return " WHERE " + " AND ".join(found) if found else ""


def ceil_minute(value: datetime) -> datetime | None:
    """The first whole minute at or after ``value``; None when it is out of range."""
    floor = value.replace(second=0, microsecond=0)
    if floor == value:
        return floor
    try:
        return floor + timedelta(minutes=1)
    except OverflowError:
        return None


def minute_aligned(filters: Filters) -> Filters:
    """``filters`` with ``start`` and ``end`` rounded up to whole minutes.

    The minute rollups read a range this way already (a bucket is in ``[start, end)``
    exactly when it is in ``[ceil(start), ceil(end))``), so rollup-based results are
    unchanged; fact-based latency then counts the same minutes as the buckets. The HTTP
    API aligns every range, so that requests with ``to=now`` in the same minute ask the
    same question (and share one cached answer). Returned unchanged when rounding would
    leave an empty range (both bounds in one minute) or overflow.
    """
    start = None if filters.start is None else ceil_minute(filters.start)
    end = None if filters.end is None else ceil_minute(filters.end)
    if (filters.start is not None and start is None) or (filters.end is not None and end is None):
        return filters
    if start == filters.start and end == filters.end:
        return filters
    if start is not None and end is not None and start >= end:
        return filters
    return replace(filters, start=start, end=end)
