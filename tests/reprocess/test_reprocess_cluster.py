"""``adpulse reprocess`` on a Spark standalone cluster started on this machine (a master
and two workers, the real cluster protocol), through the CLI: the warehouse it loads
holds exactly the streaming pipeline's facts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
from sparktest import (
    FACT_COLUMNS,
    NOW,
    PARTITIONS,
    Streamed,
    dims_warehouse,
    facts_sql,
    requires_spark,
)

from adpulse.storage.warehouse.duckdb import DuckDBWarehouse

#: The cluster test takes ~3 minutes of both cores (six JVMs): `./run test` leaves it to
#: `.ci/run`, which runs it on its own after the suite (docs/testing.md).
CLUSTER: Final = os.environ.get("ADPULSE_TEST_SPARK_CLUSTER") == "1"

pytestmark = [
    *requires_spark,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CLUSTER, reason="~3 min; run with ADPULSE_TEST_SPARK_CLUSTER=1 (.ci/run does)"
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spark_class() -> tuple[str, dict[str, str]]:
    import pyspark

    home = Path(pyspark.__file__).parent
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1"}
    return str(home / "bin" / "spark-class"), env


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[str]:
    """``spark://127.0.0.1:PORT`` of a master with two one-core workers."""
    spark_class, env = _spark_class()
    port = _free_port()
    url = f"spark://127.0.0.1:{port}"
    procs: list[subprocess.Popen[bytes]] = []
    logs = tmp_path / "cluster-logs"
    logs.mkdir()
    try:
        procs.append(
            subprocess.Popen(
                [
                    spark_class,
                    "org.apache.spark.deploy.master.Master",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--webui-port",
                    str(_free_port()),
                ],
                env=env,
                stdout=(logs / "master.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
        )
        for i in range(2):
            procs.append(
                subprocess.Popen(
                    [
                        spark_class,
                        "org.apache.spark.deploy.worker.Worker",
                        url,
                        "--host",
                        "127.0.0.1",
                        "--cores",
                        "1",
                        "--memory",
                        "1g",
                        "--webui-port",
                        str(_free_port()),
                        "--work-dir",
                        str(tmp_path / f"w{i}"),
                    ],
                    env=env,
                    stdout=(logs / f"worker{i}.log").open("wb"),
                    stderr=subprocess.STDOUT,
                )
            )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            text = (logs / "master.log").read_text(errors="replace")
            if text.count("Registering worker") >= 2:
                break
            time.sleep(1)
        else:
            pytest.fail("the standalone workers did not register:\n" + text[-2000:])
        yield url
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def test_job_on_a_standalone_cluster(
    cluster: str, dataset: Path, streamed_week: Streamed, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    dims_warehouse(home / "warehouse.duckdb", dataset).close()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "adpulse",
            "reprocess",
            str(streamed_week.home / "log"),
            "--master",
            cluster,
            "--home",
            str(home),
            "--now",
            f"{NOW:%Y-%m-%d %H:%M:%S}",
            "--out",
            str(tmp_path / "out"),
            "--json",
        ],
        env={
            **os.environ,
            "ADPULSE_PARTITIONS": str(PARTITIONS),
            # executors fit the workers' memory (Spark asks 1 GiB each by default)
            "PYSPARK_SUBMIT_ARGS": "--conf spark.executor.memory=512m"
            " --conf spark.driver.memory=768m pyspark-shell",
        },
        capture_output=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    with DuckDBWarehouse(home / "warehouse.duckdb", read_only=True) as wh:
        for table in FACT_COLUMNS:
            assert wh.query(facts_sql(table)).rows() == (
                streamed_week.warehouse.query(facts_sql(table)).rows()
            ), table
