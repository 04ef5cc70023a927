"""Effectively-once: kill -9 the processor at random instants while records are being
produced, restart it, and the warehouse ends identical to an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import duckdb
import pytest
from builders import generated_dataset

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("crash")]

PARTITIONS = 3


def _adpulse(home: Path, *args: str, **kwargs: object) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "ADPULSE_HOME": str(home),
        "ADPULSE_PARTITIONS": str(PARTITIONS),
        # Watermarks move with event time only: idle wall-clock advancement would make
        # lateness flags depend on timing, which is not what this test is about.
        "ADPULSE_IDLE_TIMEOUT_SECONDS": "100000",
        "ADPULSE_BATCH_MAX_BYTES": str(256 * 1024),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "adpulse", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,  # type: ignore[arg-type]
    )


def _run(home: Path, *args: str) -> None:
    proc = _adpulse(home, *args)
    out, errs = proc.communicate(timeout=600)
    assert proc.returncode == 0, errs.decode()[-3000:]


def _snapshot(home: Path) -> dict[str, list[tuple[object, ...]]]:
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        out: dict[str, list[tuple[object, ...]]] = {}
        for table in ("fact_impressions", "fact_clicks", "fact_conversions"):
            cols = [
                r[0] for r in con.execute(f"DESCRIBE {table}").fetchall() if r[0] != "processed_at"
            ]
            out[table] = con.execute(
                f"SELECT {', '.join(cols)} FROM {table} ORDER BY event_id"
            ).fetchall()
        out["rollups"] = con.execute(
            "SELECT minute, ad_id, campaign, platform, location, "
            "sum(impressions), sum(clicks), sum(conversions), sum(attributed_conversions), "
            "sum(revenue), round(sum(latency_sum_seconds), 6) FROM rollup_minute "
            "GROUP BY ALL HAVING sum(impressions) <> 0 OR sum(clicks) <> 0 "
            "OR sum(conversions) <> 0 ORDER BY ALL"
        ).fetchall()
        out["dead_letters"] = con.execute(
            "SELECT stream, partition, reason, detail, payload FROM dead_letters ORDER BY ALL"
        ).fetchall()
        out["stats"] = con.execute(
            "SELECT stream, partition, sum(received), sum(accepted), sum(rejected), "
            "sum(duplicates), sum(late), sum(unknown_ad), sum(unknown_user) "
            "FROM ingest_stats GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        out["checkpoints"] = con.execute(
            'SELECT stream, partition, "offset" FROM checkpoints ORDER BY ALL'
        ).fetchall()
        return out
    finally:
        con.close()


def test_kill_9_at_random_instants_changes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generated_dataset(
        data,
        60_000,
        datetime(2023, 9, 9),
        datetime(2023, 9, 10),
        seed=5,
        ads=40,
        campaigns=8,
        users=2_000,
        duplicate_rate=0.02,
        out_of_order_rate=0.05,
        late_rate=0.01,
        malformed_rate=0.003,
    )

    reference = tmp_path / "reference"
    _run(reference, "dims", "load", str(data / "campaigns.csv"), str(data / "users.csv"))
    _run(reference, "replay", str(data))

    crashed = tmp_path / "crashed"
    _run(crashed, "dims", "load", str(data / "campaigns.csv"), str(data / "users.csv"))
    producer = _adpulse(crashed, "replay", str(data), "--produce-only", "--rate", "20000")
    rng = random.Random(1234)
    kills = 0
    while producer.poll() is None or kills < 4:
        processor = _adpulse(crashed, "process")
        time.sleep(rng.uniform(1.5, 3.5))  # includes start-up; kills land mid-batch too
        # A processor only ever ends by our kill: one that exits by itself has failed.
        assert processor.poll() is None, processor.communicate()[1].decode()[-3000:]
        processor.send_signal(signal.SIGKILL)
        kills += 1
        assert processor.wait() == -signal.SIGKILL
        if kills >= 8:
            break
    assert producer.wait(timeout=300) == 0, producer.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
    assert kills >= 4
    _run(crashed, "process", "--until-caught-up")

    want, got = _snapshot(reference), _snapshot(crashed)
    assert sum(len(v) for v in want.values()) > 50_000
    for key in want:
        assert got[key] == want[key], key
