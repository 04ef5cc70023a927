"""DuckDB's impression segments: a large batch's impressions are one Parquet file,
listed in fact_segments and shown by the fact_impressions view in the commit's
transaction; a crash or a failed commit never shows or loses one."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pytest
from builders import clicks, count, output, stats

from adpulse.contracts import Stream
from adpulse.storage.warehouse import schema
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse, WarehouseUnavailableError


def impressions(*ids: str, partition: int = 0) -> pl.DataFrame:
    return clicks(*((i, n, partition) for n, i in enumerate(ids)))


def open_warehouse(path: Path, segment_min_rows: int = 2) -> DuckDBWarehouse:
    wh = DuckDBWarehouse(path, segment_min_rows=segment_min_rows)
    wh.create_schema()
    return wh


def segment_files(wh: DuckDBWarehouse) -> list[str]:
    return sorted(p.name for p in wh.segments_dir.glob("*.parquet"))


def ids(wh: DuckDBWarehouse) -> list[str]:
    return wh.query("SELECT event_id FROM fact_impressions ORDER BY event_id")["event_id"].to_list()


def test_large_batches_become_segments_and_small_ones_rows(tmp_path: Path) -> None:
    with open_warehouse(tmp_path / "w.duckdb", segment_min_rows=3) as wh:
        wh.commit(output(1, impressions=impressions("i1", "i2", "i3"), stats=stats(1, 3)))
        wh.commit(output(2, impressions=impressions("i4", "i5"), stats=stats(2, 2)))
        assert ids(wh) == ["i1", "i2", "i3", "i4", "i5"]
        assert count(wh, "fact_impressions_rows") == 2
        files = segment_files(wh)
        assert len(files) == 1
        listed = wh.query("SELECT table_name, file, rows FROM fact_segments").rows()
        assert listed == [("fact_impressions", files[0], 3)]
        # the same types as the table's rows, and the state rebuild reads both
        stored = wh.query("SELECT * FROM fact_impressions WHERE event_id = 'i1'")
        assert stored.schema == pl.Schema(schema.FACT_IMPRESSIONS)
        loaded = wh.load_event_ids("fact_impressions", [0], stored["event_time"][0])
        assert sorted(loaded["event_id"]) == ["i1", "i2", "i3", "i4", "i5"]
    # read-only opens see the segments too
    with DuckDBWarehouse(tmp_path / "w.duckdb", read_only=True) as ro:
        assert ids(ro) == ["i1", "i2", "i3", "i4", "i5"]


def test_a_failed_commit_leaves_no_segment(tmp_path: Path) -> None:
    with open_warehouse(tmp_path / "w.duckdb") as wh:
        batch = output(1, impressions=impressions("i1", "i2"), stats=stats(1, 2))
        batch.offsets[(Stream.CLICKS, 2**40)] = "9"  # refused after the segment is written
        with pytest.raises(Exception, match="Int32|INT32|out of range|overflow"):
            wh.commit(batch)
        assert ids(wh) == [] and segment_files(wh) == []
        assert count(wh, "fact_segments") == 0
        # check_commit (isolation's dry run) writes and rolls back: nothing stays either
        wh.check_commit(output(2, impressions=impressions("i3", "i4")))
        assert ids(wh) == [] and segment_files(wh) == []


def test_a_crash_before_the_commit_leaves_a_file_deleted_at_the_next_open(
    tmp_path: Path,
) -> None:
    path = tmp_path / "w.duckdb"
    with open_warehouse(path) as wh:
        wh.commit(output(1, impressions=impressions("i1", "i2"), stats=stats(1, 2)))
        # written, never listed: the process was killed before its COMMIT
        orphan = wh.segments_dir / "0123.parquet"
        impressions("x1", "x2").write_parquet(orphan)
        assert ids(wh) == ["i1", "i2"]  # never shown
    with open_warehouse(path) as wh:
        assert ids(wh) == ["i1", "i2"]
        assert not orphan.exists() and len(segment_files(wh)) == 1


def test_a_missing_segment_stops_the_open_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    with open_warehouse(path) as wh:
        wh.commit(output(1, impressions=impressions("i1", "i2"), stats=stats(1, 2)))
        (lost,) = wh.segments_dir.glob("*.parquet")
    lost.unlink()
    with DuckDBWarehouse(path) as wh, pytest.raises(WarehouseUnavailableError, match="backup"):
        wh.create_schema()


def test_a_moved_warehouse_finds_its_segments_once_opened_for_writing(tmp_path: Path) -> None:
    with open_warehouse(tmp_path / "a" / "w.duckdb") as wh:
        wh.commit(output(1, impressions=impressions("i1", "i2"), stats=stats(1, 2)))
    (tmp_path / "a").rename(tmp_path / "b")
    with open_warehouse(tmp_path / "b" / "w.duckdb") as wh:
        assert ids(wh) == ["i1", "i2"]


def test_an_earlier_warehouse_keeps_its_impressions(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    columns = ", ".join(
        f'"{name}" {DuckDBWarehouse.sql_dialect.column_type(dtype)}'
        for name, dtype in schema.FACT_IMPRESSIONS.items()
    )
    con.execute(f"CREATE TABLE fact_impressions ({columns})")
    con.register("old_rows", impressions("o1", "o2"))
    con.execute("INSERT INTO fact_impressions SELECT * FROM old_rows")
    con.close()
    with open_warehouse(path) as wh:
        wh.commit(output(1, impressions=impressions("n1", "n2"), stats=stats(1, 2)))
        assert ids(wh) == ["n1", "n2", "o1", "o2"]
        assert count(wh, "fact_impressions_rows") == 2
    with open_warehouse(path) as wh:  # idempotent
        assert ids(wh) == ["n1", "n2", "o1", "o2"]
