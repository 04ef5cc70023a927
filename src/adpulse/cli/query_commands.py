"""``adpulse query`` and ``status``: metrics and the pipeline's state from the warehouse,
or from the running server that holds it (:mod:`adpulse.cli.remote`)."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Annotated, Any, Literal, cast

import polars as pl
import typer

from adpulse.cli import tables
from adpulse.cli.options import ConfigOpt, FormatOpt, HomeOpt, OutputFormat
from adpulse.cli.output import console, err, print_frame, write_json
from adpulse.cli.runtime import Runtime, UserError, open_runtime, settings_for
from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.metrics import GROUPED_NAMES


class GroupByOpt(StrEnum):
    none = "none"
    ad = "ad"
    campaign = "campaign"


#: What ``query`` shows: the catalog's grouped metrics, then the rankings and the summary.
METRICS = (*GROUPED_NAMES, "trending", "top-ads", "summary")


def query(
    metric: Annotated[
        str,
        typer.Argument(help=" | ".join(METRICS)),
    ],
    home: HomeOpt = None,
    config: ConfigOpt = None,
    by: Annotated[
        GroupByOpt, typer.Option("--by", help="Group by ad or campaign.")
    ] = GroupByOpt.none,
    campaign: Annotated[str | None, typer.Option(help="Only this campaign.")] = None,
    ad: Annotated[int | None, typer.Option(help="Only this ad id.")] = None,
    from_: Annotated[
        str | None, typer.Option("--from", help="Start (inclusive), e.g. '2023-09-09 10:00'.")
    ] = None,
    to: Annotated[str | None, typer.Option("--to", help="End (exclusive).")] = None,
    platform: Annotated[str | None, typer.Option(help="Web, Mobile, Tablet...")] = None,
    location: Annotated[str | None, typer.Option(help="e.g. 'New York'.")] = None,
    gender: Annotated[str | None, typer.Option()] = None,
    age_band: Annotated[str | None, typer.Option(help="<18, 18-24, 25-34, ... 65+")] = None,
    interest: Annotated[str | None, typer.Option(help="One interest, e.g. Travel.")] = None,
    rank_by: Annotated[str, typer.Option(help="top-ads: revenue | conversion_rate.")] = "revenue",
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Rows for rankings.")] = 10,
    min_clicks: Annotated[
        int | None, typer.Option(help="Minimum clicks for rate rankings (default from settings).")
    ] = None,
    window: Annotated[
        int | None,
        typer.Option(min=1, max=1440, help="trending: window in minutes (default from settings)."),
    ] = None,
    fmt: Annotated[
        OutputFormat, typer.Option("--format", help="table | json | csv")
    ] = OutputFormat.table,
) -> None:
    """Metrics over any time range and filters (the query layer the HTTP API and the
    dashboard also read)."""
    from adpulse.serving import queries

    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    settings = settings_for(home, config)
    try:
        filters = queries.Filters.from_text(
            campaign=campaign,
            ad_id=ad,
            start=from_,
            end=to,
            platform=platform,
            location=location,
            gender=gender,
            age_band=age_band,
            interest=interest,
            start_name="--from",
            end_name="--to",
        )
        filters = queries.minute_aligned(filters)  # whole minutes, as the HTTP API reads them
    except queries.FilterError as exc:
        raise UserError(str(exc)) from exc
    group = cast("queries.GroupBy", None if by is GroupByOpt.none else by.value)
    if rank_by not in ("revenue", "conversion_rate"):
        raise UserError(f"--rank-by must be revenue or conversion_rate, not {rank_by!r}")
    mc = settings.min_clicks if min_clicks is None else min_clicks
    minutes = settings.trending_window_minutes if window is None else window
    try:
        with open_runtime(settings, read_only=True) as rt:
            wh = rt.warehouse
            filters = _checked(rt, filters)
            if fmt is OutputFormat.json:  # the HTTP API's answer, the same shape
                answer = _answer(rt, metric, filters, group, rank_by, mc, minutes, limit)
                sys.stdout.write(_json(answer))
                return
            if metric in GROUPED_NAMES:
                frame = queries.grouped_metric(wh, metric, filters, group, store=rt.store)
            elif metric == "trending":
                frame = queries.trending(
                    wh,
                    filters,
                    window_minutes=minutes,
                    min_clicks=mc,
                    limit=limit,
                    store=rt.store,
                )
            elif metric == "top-ads":
                frame = queries.top_ads(
                    wh,
                    filters,
                    by=cast("Literal['revenue', 'conversion_rate']", rank_by),
                    min_clicks=mc,
                    limit=limit,
                    store=rt.store,
                )
            else:
                frame = queries.summary(wh, filters, store=rt.store)
            empty = "no rows match these filters"
            if frame.height == 0 and fmt is OutputFormat.table:
                empty = _why_nothing(wh, metric, filters, rank_by, mc, minutes)
    except UserError as exc:  # a running demo or server holds the warehouse: ask it
        from adpulse.cli import remote

        server = remote.server_holding(settings, exc)
        path, params = _api_query(metric, group, rank_by, mc, minutes, limit)
        params |= {"campaign": campaign, "ad": ad, "from": from_, "to": to}
        params |= {"platform": platform, "location": location, "gender": gender}
        params |= {"age_band": age_band, "interest": interest}
        err.print(f"(asking {server.url}: process {server.pid} holds the warehouse)")
        answer = remote.get(server, path, params)
        if fmt is OutputFormat.json:
            sys.stdout.write(_json(answer))
            return
        frame = _frame_of(answer)
        empty = "no rows match these filters"
    print_frame(frame, fmt, empty)


def _api_query(
    metric: str, group: Any, rank_by: str, min_clicks: int, minutes: int, limit: int
) -> tuple[str, dict[str, Any]]:
    """The HTTP API's path and parameters (filters aside) for this ``query``."""
    if metric in GROUPED_NAMES:
        return f"metrics/{metric}", {"by": group}
    if metric == "trending":
        return "trending", {"window": minutes, "min_clicks": min_clicks, "limit": limit}
    if metric == "top-ads":
        return "top-ads", {"by": rank_by, "min_clicks": min_clicks, "limit": limit}
    return "summary", {}


def _frame_of(answer: dict[str, Any]) -> pl.DataFrame:
    """The rows of an API answer (the summary's one object as one row) as a frame."""
    rows = [answer["summary"]] if "summary" in answer else answer.get("rows") or []
    return pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()


#: The CLI's names of the checked filters, for messages.
OPTION_NAMES = {
    "campaign": "--campaign",
    "ad_id": "--ad",
    "platform": "--platform",
    "location": "--location",
    "gender": "--gender",
    "interest": "--interest",
}


def _checked(rt: Runtime, filters: Any) -> Any:
    """``filters`` with stored spellings; a :class:`UserError` (exit 2) naming the close
    matches of a value the data does not hold."""
    from adpulse.serving import queries

    try:
        return queries.known_values(rt.warehouse).check(filters, OPTION_NAMES)
    except queries.FilterError as exc:
        raise UserError(str(exc)) from exc


def _answer(
    rt: Runtime,
    metric: str,
    filters: Any,
    group: Any,
    rank_by: str,
    min_clicks: int,
    minutes: int,
    limit: int,
) -> dict[str, Any]:
    """What ``GET /api/v1/...`` answers for this query (:mod:`adpulse.serving.answers`)."""
    from adpulse.serving import answers

    wh, store = rt.warehouse, rt.store
    if metric in GROUPED_NAMES:
        return answers.metric_answer(wh, metric, filters, group, store)
    if metric == "trending":
        return answers.trending_answer(wh, filters, minutes, min_clicks, limit, store)
    if metric == "top-ads":
        by = cast("Literal['revenue', 'conversion_rate']", rank_by)
        return answers.top_ads_answer(wh, filters, by, min_clicks, limit, store)
    return answers.summary_answer(wh, filters, store)


def _json(value: Any) -> str:
    """``value`` (JSON-ready) as indented JSON and a newline."""
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def _why_nothing(
    wh: Any, metric: str, filters: Any, rank_by: str, min_clicks: int, minutes: int
) -> str:
    """One line saying why a query has no rows, and what to change."""
    from adpulse.serving import queries

    if queries.data_range(wh)["last_minute"] is None:
        return "no data yet: nothing is committed (run `adpulse replay` or `adpulse demo`)"
    if metric == "trending":
        windows = queries.trending_windows(wh, filters, minutes)
        before = f" before {windows.end:%Y-%m-%d %H:%M}" if windows is not None else ""
        return (
            f"no campaign trending: none has {min_clicks:,}+ clicks in both"
            f" {minutes}-minute windows{before}; try a longer --window or a lower"
            " --min-clicks"
        )
    if metric == "top-ads" and rank_by == "conversion_rate":
        return (
            f"no ad has at least {min_clicks:,} clicks under these filters;"
            " try a lower --min-clicks or a wider --from/--to"
        )
    return "no rows match these filters; try fewer filters or a wider --from/--to"


def status(
    home: HomeOpt = None,
    config: ConfigOpt = None,
    fmt: FormatOpt = OutputFormat.table,
) -> None:
    """Pipeline status: records per stream, dead letters by reason, watermarks, and the
    owner of each partition when workers share them."""
    from adpulse.serving import queries

    settings = settings_for(home, config)
    try:
        with open_runtime(settings, read_only=True) as rt:
            info: dict[str, Any] = dict(queries.pipeline_status(rt.warehouse))
            owners = queries.partition_owners(rt.warehouse)
            if owners.height:  # only when workers share the partitions
                info["partition_owners"] = owners
            if settings.transport_url.startswith("kinesis://"):
                info["kinesis_shards"] = _kinesis_shards(
                    settings, rt.warehouse.load_offsets(), owners
                )
    except UserError as exc:  # a running demo or server holds the warehouse: ask it
        from adpulse.cli import remote

        server = remote.server_holding(settings, exc)
        err.print(f"(asking {server.url}: process {server.pid} holds the warehouse)")
        health = remote.get(server, "health", {})
        info = {
            name: pl.DataFrame(value, infer_schema_length=None)
            if isinstance(value, list)
            else value
            for name, value in health.items()
            if name not in ("data_range", "live")  # what `status` shows, no more
        }
    if fmt is OutputFormat.json:
        plain = {k: v.to_dicts() if isinstance(v, pl.DataFrame) else v for k, v in info.items()}
        write_json(plain)
        return
    for name, value in info.items():
        console.rule(name)
        if isinstance(value, pl.DataFrame):
            print_frame(value, OutputFormat.table, f"no {name.replace('_', ' ')}")
        else:
            console.print(tables.format_value(name, value))


def _kinesis_shards(
    settings: Settings, committed: dict[tuple[Stream, int], str], owners: pl.DataFrame
) -> pl.DataFrame | str:
    """Shard, owner and iterator age of each stream partition (the streams are not
    created: status only reads); why not, when the streams cannot be read."""
    from adpulse.transport.kinesis import open_kinesis_transport

    by_partition = {
        int(r["partition"]): f"{r['host']}:{r['pid']}"
        for r in (owners.to_dicts() if owners.height else [])
        if r["live"]
    }
    try:
        transport = open_kinesis_transport(
            settings.transport_url, settings.partitions, settings.max_record_bytes, create=False
        )
        try:
            return pl.DataFrame(transport.shard_report(dict(committed), by_partition))
        finally:
            transport.close()
    except Exception as exc:  # noqa: BLE001 - status reports what it cannot read
        return f"unavailable: {exc}"
