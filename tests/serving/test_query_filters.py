"""Filter validation, and filter values that look like SQL staying plain values."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from adpulse.serving import queries
from adpulse.serving.queries import AGE_BAND_LABELS, MAX_FILTER_LENGTH, FilterError, Filters
from adpulse.storage.warehouse.base import Warehouse

INJECTIONS = [
    "x' OR '1'='1",
    "'; DROP TABLE rollup_minute; --",
    "Summer Sale' --",
    "%",
    "_",
    'Back-to-School" OR "1"="1',
    "1; SELECT 1",
]


@pytest.mark.parametrize("value", INJECTIONS)
def test_sql_shaped_values_are_bound_not_executed(warehouse: Warehouse, value: str) -> None:
    for field in ("campaign", "platform", "location", "gender", "interest"):
        if field == "interest" and ";" in value:
            continue  # not a valid single interest; checked below
        filters = Filters(**{field: value})  # type: ignore[arg-type]
        assert queries.counts(warehouse, filters).is_empty()
        assert queries.counts(warehouse, filters, "campaign").is_empty()
        assert queries.counts(warehouse, filters, "ad").is_empty()
        assert queries.conversion_latency(warehouse, filters).is_empty()
        assert queries.top_ads(warehouse, filters).is_empty()
        assert queries.trending(warehouse, filters, min_clicks=0).is_empty()
        assert queries.timeseries(warehouse, filters).is_empty()
        assert queries.summary(warehouse, filters).row(0)[:4] == (0, 0, 0, 0)
    # and the tables are all still there
    assert queries.counts(warehouse, Filters()).row(0)[:4] == (230, 24, 7, 6)


def test_interest_with_a_separator_is_refused() -> None:
    with pytest.raises(FilterError, match="single interest"):
        Filters(interest="Music;Travel")


@pytest.mark.parametrize("field", ["campaign", "platform", "location", "gender", "interest"])
def test_oversize_and_empty_values_raise(field: str) -> None:
    Filters(**{field: "x" * MAX_FILTER_LENGTH})  # type: ignore[arg-type]
    with pytest.raises(FilterError, match=f"{field} is {MAX_FILTER_LENGTH + 1} characters"):
        Filters(**{field: "x" * (MAX_FILTER_LENGTH + 1)})  # type: ignore[arg-type]
    with pytest.raises(FilterError, match=f"{field} must not be empty"):
        Filters(**{field: ""})  # type: ignore[arg-type]
    with pytest.raises(FilterError, match=f"{field} must be text"):
        Filters(**{field: 5})  # type: ignore[arg-type]


def test_age_band_must_be_a_known_label() -> None:
    assert AGE_BAND_LABELS == ("<18", "18-24", "25-34", "35-44", "45-54", "55-64", "65+")
    for label in AGE_BAND_LABELS:
        assert Filters(age_band=label).age_band == label
    with pytest.raises(FilterError, match="age_band must be one of <18, 18-24"):
        Filters(age_band="18-25")


@pytest.mark.parametrize("value", [True, "1001", 1.5, 2**63])
def test_ad_id_must_be_a_64_bit_integer(value: object) -> None:
    with pytest.raises(FilterError, match="ad_id must be a 64-bit integer"):
        Filters(ad_id=value)  # type: ignore[arg-type]


def test_time_range_must_be_datetimes_in_order() -> None:
    with pytest.raises(FilterError, match="start must be a datetime"):
        Filters(start="2023-09-09")  # type: ignore[arg-type]
    with pytest.raises(FilterError, match=r"start \(2023-09-09 10:00:00\) must be before end"):
        Filters(start=datetime(2023, 9, 9, 10), end=datetime(2023, 9, 9, 10))


def test_filters_are_immutable() -> None:
    filters = Filters(campaign="Summer Sale")
    with pytest.raises(AttributeError):
        filters.campaign = "other"  # type: ignore[misc]


def test_option_values_are_checked(warehouse: Warehouse) -> None:
    with pytest.raises(FilterError, match="group_by must be None, 'ad' or 'campaign'"):
        queries.counts(warehouse, Filters(), "platform")  # type: ignore[arg-type]
    with pytest.raises(FilterError, match="by must be 'revenue' or 'conversion_rate'"):
        queries.top_ads(warehouse, Filters(), by="ctr")  # type: ignore[arg-type]
    with pytest.raises(FilterError, match="limit must be an integer from 1"):
        queries.top_ads(warehouse, Filters(), limit=0)
    with pytest.raises(FilterError, match="min_clicks must be an integer from 0"):
        queries.trending(warehouse, Filters(), min_clicks=-1)
    with pytest.raises(FilterError, match="window_minutes must be an integer from 1"):
        queries.trending(warehouse, Filters(), window_minutes=0)


def test_filters_from_text_parse_times_and_name_them_in_errors() -> None:
    filters = Filters.from_text(
        campaign="Summer Sale", ad_id=7, start="2023-09-09 10:00", end="2023-09-09T12:30:00+02:00"
    )
    assert filters == Filters(
        "Summer Sale", 7, datetime(2023, 9, 9, 10, 0), datetime(2023, 9, 9, 10, 30)
    )
    assert Filters.from_text(start="", end=None) == Filters()  # empty text: no bound
    with pytest.raises(FilterError, match=r"^--from: cannot read 'xx'; use 'YYYY-MM-DD'"):
        Filters.from_text(start="xx", start_name="--from")
    with pytest.raises(FilterError, match=r"^to: cannot read '2023-13-01'"):
        Filters.from_text(end="2023-13-01", end_name="to")
    with pytest.raises(FilterError, match=r"^age_band must be one of"):
        Filters.from_text(age_band="99")


def test_filters_from_text_refuse_a_range_over_max_range() -> None:
    days = timedelta(days=10)
    within = Filters.from_text(start="2023-09-01", end="2023-09-11", max_range=days)
    assert within.end - within.start == days  # type: ignore[operator]
    with pytest.raises(FilterError) as refused:
        Filters.from_text(start="2023-09-01", end="2023-09-11 12:00", max_range=days)
    assert str(refused.value) == "the time range is 10.5 days long; at most 10 days"
    # without max_range (the CLI) any length is fine
    assert Filters.from_text(start="2000-01-01", end="2023-09-11").start == datetime(2000, 1, 1)
