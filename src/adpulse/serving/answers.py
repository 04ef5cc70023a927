"""The answers of the query API as JSON-ready values, one function per kind of query.

The HTTP routes answer with them and ``adpulse query --format json`` prints them, so
both show one shape: ``{"filters": <the filters used>, "rows": [<row objects>]}`` plus
the query's own settings (``metric``/``by``, ``window_minutes``/``min_clicks``, ...);
the summary has ``"summary": {...}`` (one object) instead of ``rows``. Money is a JSON
number, times ISO-8601 UTC with a ``Z``, undefined ratios ``null``
(:func:`adpulse.serving.http.encoding.plain`).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from adpulse.serving import queries
from adpulse.serving.http.encoding import plain
from adpulse.serving.queries import Filters
from adpulse.serving.store.base import ServingStore
from adpulse.storage.warehouse.base import Warehouse

Answer = dict[str, Any]


def filters_echo(filters: Filters) -> dict[str, Any]:
    """The filters given, as echoed in every answer (field names of :class:`Filters`)."""
    return {k: v for k, v in asdict(filters).items() if v is not None}


def metric_answer(
    warehouse: Warehouse,
    metric: str,
    filters: Filters,
    by: queries.GroupBy,
    store: ServingStore | None = None,
) -> Answer:
    """One metric of the catalog, optionally grouped by ad or campaign."""
    rows = queries.grouped_metric(warehouse, metric, filters, by, store=store)
    return _plain({"metric": metric, "by": by, "filters": filters_echo(filters), "rows": rows})


def summary_answer(
    warehouse: Warehouse, filters: Filters, store: ServingStore | None = None
) -> Answer:
    """The headline numbers, as one object under ``summary``."""
    row = queries.summary(warehouse, filters, store=store).row(0, named=True)
    return _plain({"filters": filters_echo(filters), "summary": row})


def trending_answer(
    warehouse: Warehouse,
    filters: Filters,
    window_minutes: int,
    min_clicks: int,
    limit: int,
    store: ServingStore | None = None,
) -> Answer:
    """Trending campaigns, with the two windows compared."""
    windows = queries.trending_windows(warehouse, filters, window_minutes)
    rows = queries.trending(warehouse, filters, window_minutes, min_clicks, limit, store=store)
    return _plain(
        {
            "window_minutes": window_minutes,
            "min_clicks": min_clicks,
            "windows": None if windows is None else asdict(windows),
            "filters": filters_echo(filters),
            "rows": rows,
        }
    )


def top_ads_answer(
    warehouse: Warehouse,
    filters: Filters,
    by: queries.TopAdsBy,
    min_clicks: int,
    limit: int,
    store: ServingStore | None = None,
) -> Answer:
    """The best ads by revenue or by conversion rate."""
    rows = queries.top_ads(warehouse, filters, by, min_clicks, limit, store=store)
    return _plain(
        {"by": by, "min_clicks": min_clicks, "filters": filters_echo(filters), "rows": rows}
    )


def _plain(answer: Answer) -> Answer:
    result: Answer = plain(answer)
    return result
