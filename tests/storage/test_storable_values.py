"""What a warehouse must always be able to store (issue 8, items 1 and 3), on DuckDB and
PostgreSQL alike: any dead letter, whatever its payload and detail hold; revenue sums
beyond DECIMAL(18,4), also in a warehouse an earlier version created with that type;
and no NUL from a dimension file."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from builders import T0, fresh_warehouse, output, stats

from adpulse.storage.dimensions import DimensionFileError, parse_dimension_csv
from adpulse.storage.warehouse import schema
from adpulse.storage.warehouse.base import Warehouse
from adpulse.storage.warehouse.sql import SqlWarehouse


@pytest.fixture(params=["duckdb", "postgres", "redshift"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlWarehouse]:
    with fresh_warehouse(request.param, tmp_path / "w.duckdb") as wh:
        assert isinstance(wh, SqlWarehouse)
        yield wh


def dead_letter(detail: str, payload: bytes, reason: str = "bad_timestamp") -> dict[str, object]:
    return {
        "stream": "clicks",
        "partition": 0,
        "source_offset": "0-1",
        "record_index": 0,
        "reason": reason,
        "detail": detail,
        "payload": payload,
        "received_at": T0,
    }


def test_any_dead_letter_is_stored(warehouse: Warehouse) -> None:
    # A NUL in a rejected record's timestamp, quoted in the detail, broke COPY dead_letters
    # on PostgreSQL on every retry.
    payloads = [
        b'{"click_timestamp": "2023-09-09\\u0000"}',
        b"\x00\xff\xfe raw bytes, not UTF-8 \x00",
        b"",
    ]
    details = ["click_timestamp is not a timestamp: 2023-09-09\x00", "\x00", "ok"]
    frame = pl.DataFrame(
        [dead_letter(d, p) for d, p in zip(details, payloads, strict=True)],
        schema=schema.DEAD_LETTERS,
    )
    warehouse.commit(output(1, dead_letters=frame, stats=stats(1, 3)))
    got = warehouse.query("SELECT detail, payload FROM dead_letters ORDER BY record_index").rows()
    assert sorted((str(d), bytes(p)) for d, p in got) == sorted(
        [
            ("click_timestamp is not a timestamp: 2023-09-09\\x00", payloads[0]),
            ("\\x00", payloads[1]),
            ("ok", payloads[2]),
        ]
    )


def rollup(revenue: str) -> pl.DataFrame:
    return schema.conform(
        pl.DataFrame(
            {
                "minute": [T0],
                "ad_id": [1001],
                "conversions": [1],
                "revenue": [Decimal(revenue)],
            },
            schema_overrides={"revenue": schema.REVENUE_SUM},
        ),
        schema.ROLLUP_MINUTE,
    )


def test_rollup_revenue_beyond_decimal_18_4_is_stored_and_summed(warehouse: Warehouse) -> None:
    warehouse.commit(output(1, rollups=rollup("100001000000000.0001"), stats=stats(1, 1)))
    warehouse.commit(output(2, rollups=rollup("99999999999999999999.9999"), stats=stats(2, 1)))
    total = warehouse.query(
        "SELECT CAST(SUM(revenue) AS DECIMAL(38,4)) AS revenue FROM rollup_minute"
    ).item()
    assert total == Decimal("100000100001000000000.0000")


def test_a_narrower_revenue_column_of_an_earlier_version_is_widened(
    warehouse: SqlWarehouse,
) -> None:
    warehouse.commit(output(1, rollups=rollup("12.3456"), stats=stats(1, 1)))
    with warehouse._transaction():  # as an earlier version created it
        warehouse._execute("ALTER TABLE rollup_minute ALTER COLUMN revenue TYPE DECIMAL(18,4)")
    precision = (
        "SELECT numeric_precision, numeric_scale FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = 'rollup_minute'"
        " AND column_name = 'revenue'"
    )
    assert warehouse.query(precision).rows() == [(18, 4)]
    warehouse.create_schema()
    assert warehouse.query(precision).rows() == [(38, 4)]
    warehouse.create_schema()  # idempotent
    warehouse.commit(output(2, rollups=rollup("100001000000000.0000"), stats=stats(2, 1)))
    assert sorted(r for (r,) in warehouse.query("SELECT revenue FROM rollup_minute").rows()) == [
        Decimal("12.3456"),
        Decimal("100001000000000.0000"),
    ]


@pytest.mark.parametrize(
    ("text", "column"),
    [
        (
            "ad_id, campaign, product, target_start_date, target_end_date\n"
            "1001, Back-to-\x00School, Laptop, 2023-08-01, 2023-10-31\n",
            "campaign",
        ),
        ("user_id, age, gender, interests\nU1\x00, 22, Female, Travel\n", "user_id"),
        ("user_id, age, gender, interests\nU1, 22, Female, Travel;\x00\n", "interests"),
    ],
)
def test_a_nul_in_a_dimension_file_is_refused_with_its_place(text: str, column: str) -> None:
    with pytest.raises(DimensionFileError) as info:
        parse_dimension_csv(text, source="dims.csv")
    assert str(info.value) == (
        f"dims.csv:2: column {column!r}: holds a NUL character (U+0000), which a warehouse"
        " cannot store; remove it from the file"
    )
