"""The Redshift backend's own behaviour (the shared contract is test_warehouse_contract.py):
S3 staging on the local AWS API server, the statements it sends checked against
Redshift's grammar, the URL and settings, leases with Redshift's clock. What runs where
is said in redshifttest.py; what only a real Redshift can confirm, in docs/redshift.md."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from awstest import use_local_aws
from builders import at, clicks, committed_state, conversions, count, output, stats
from redshifttest import (
    IAM_ROLE,
    ParquetCopyShim,
    StatementLog,
    new_bucket,
    redshift_problems,
    redshift_warehouse,
    s3_client,
    staging,
)

from adpulse.backends import WAREHOUSE
from adpulse.config import Settings
from adpulse.contracts import Stream
from adpulse.storage.warehouse import schema
from adpulse.storage.warehouse.base import BatchOutput, LeaseLostError
from adpulse.storage.warehouse.leases import WorkerIdentity
from adpulse.storage.warehouse.redshift import (
    MAX_VARBYTE_BYTES,
    MAX_VARCHAR_BYTES,
    REDSHIFT,
    copy_parquet,
    fit_dead_letters,
    redshift_target,
)
from adpulse.storage.warehouse.s3staging import S3Location, S3Staging, StagingError


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> str:
    return use_local_aws(monkeypatch, own_process=True)  # the server redshifttest uses


@pytest.fixture
def log() -> StatementLog:
    return StatementLog()


@pytest.fixture
def warehouse(aws: str, log: StatementLog) -> Iterator[ParquetCopyShim]:
    with redshift_warehouse(log) as wh:
        yield wh


def a_batch(batch_id: int, offset: str) -> BatchOutput:
    batch = output(
        batch_id,
        clicks=clicks((f"k{batch_id}", 0, 0), (f"l{batch_id}", 10, 1)),
        conversions=conversions((f"v{batch_id}", 600, "k-old", 500.0, "Mobile")),
        stats=stats(batch_id, 2),
    )
    batch.offsets = {(Stream.CLICKS, 0): offset}
    return batch


# -- S3 staging ---------------------------------------------------------------------------
def test_a_commit_copies_each_frame_from_s3_and_deletes_the_objects(
    warehouse: ParquetCopyShim,
) -> None:
    warehouse.copies.clear()
    warehouse.commit(a_batch(1, "7"))
    # One staged object per written frame: clicks, conversions, stats, checkpoints.
    staged = [c.split()[1] for c in warehouse.copies]
    assert staged == [
        '"staged_fact_clicks"',
        '"staged_fact_conversions"',
        '"staged_ingest_stats"',
        '"staged_checkpoints"',
    ]
    bucket = warehouse.staging.location.bucket
    for statement in warehouse.copies:
        assert f"FROM 's3://{bucket}/adpulse/staging/" in statement
        assert statement.endswith(f".parquet' IAM_ROLE '{IAM_ROLE}' FORMAT AS PARQUET")
    assert warehouse.staging.keys() == []  # deleted after the commit
    assert count(warehouse, "fact_clicks") == 2
    assert count(warehouse, "fact_conversions") == 1
    assert warehouse.load_offsets() == {(Stream.CLICKS, 0): "7"}


def test_the_staged_parquet_holds_the_frame_exactly(aws: str) -> None:
    place = staging(new_bucket())
    frame = schema.conform(
        pl.DataFrame(
            {
                "stream": ["clicks", None],
                "partition": [3, 0],
                "source_offset": ["12", "0"],
                "record_index": [1, 2],
                "reason": ["bad_json", "bad_timestamp"],
                "detail": ["é ✓ \\x00", ""],
                "payload": [b"\x00\xff{", None],
                "received_at": [at(1.5), at(0)],
            }
        ),
        schema.DEAD_LETTERS,
    )
    uri = place.put("staged_dead_letters", frame)
    assert uri.startswith(f"s3://{place.location.bucket}/adpulse/staging/")
    assert uri.endswith("/staged_dead_letters.parquet")
    back = place.read(uri)
    assert back.schema == frame.schema
    assert back.equals(frame)
    revenue = pl.DataFrame({"r": [Decimal("12.3456")]}, schema={"r": schema.REVENUE_SUM})
    assert place.read(place.put("r", revenue)).to_dicts() == [{"r": Decimal("12.3456")}]


def test_a_rolled_back_commit_writes_nothing_and_deletes_its_objects(
    warehouse: ParquetCopyShim,
) -> None:
    warehouse.commit(a_batch(1, "1"))
    before = committed_state(warehouse)
    warehouse.copies.clear()
    warehouse.check_commit(a_batch(2, "2"))  # always rolled back
    assert len(warehouse.copies) == 4  # it did stage and copy
    assert committed_state(warehouse) == before
    assert warehouse.staging.keys() == []


def test_a_lost_lease_rolls_back_before_staging_anything(warehouse: ParquetCopyShim) -> None:
    leases = warehouse.partition_leases(WorkerIdentity("w1", "h", 1), 1, ttl_seconds=30)
    leases.register()
    epoch = leases.acquire(0)
    assert epoch == 1
    batch = a_batch(1, "1")
    batch.fence = leases.fence({0: epoch + 1})  # a stale epoch
    warehouse.copies.clear()
    with pytest.raises(LeaseLostError):
        warehouse.commit(batch)
    assert warehouse.copies == []
    assert count(warehouse, "fact_clicks") == 0
    batch.fence = leases.fence({0: epoch})
    warehouse.commit(batch)
    assert count(warehouse, "fact_clicks") == 2
    leases.close()


def test_orphans_are_removed_once_old(aws: str) -> None:
    place = staging(new_bucket())
    frame = pl.DataFrame({"a": [1]})
    place.put("left_by_a_killed_process", frame)
    assert place.remove_orphans() == 0  # younger than an hour: maybe in use
    assert len(place.keys()) == 1
    assert place.remove_orphans(older_than=timedelta(0)) == 1
    assert place.keys() == []


def test_staging_errors_name_the_bucket_never_the_credentials(
    aws: str, caplog: pytest.LogCaptureFixture
) -> None:
    import boto3

    secret = "wJalrXUtnFEMI-K7MDENG-not-a-real-secret"
    client = boto3.client(
        "s3",
        region_name="eu-central-1",
        endpoint_url=aws,
        aws_access_key_id="AKIATESTNOTREAL",
        aws_secret_access_key=secret,
    )
    place = S3Staging(S3Location("no-such-bucket-adpulse", "p"), client=client)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StagingError, match="no-such-bucket-adpulse.*NoSuchBucket") as info:
        place.put("staged_x", pl.DataFrame({"a": [1]}))
    place.delete(["s3://no-such-bucket-adpulse/p/x.parquet"])  # logged, not raised
    assert "could not delete 1 staged objects" in caplog.text
    for text in (str(info.value), caplog.text):
        assert secret not in text


# -- the SQL ----------------------------------------------------------------------------
def test_the_checker_catches_postgresql_only_sql() -> None:
    refused = {
        "INSERT INTO meta (key, value) VALUES ('a', 1) ON CONFLICT (key) DO NOTHING": "ON CONFLICT",
        "UPDATE meta SET value = 1 RETURNING value": "RETURNING",
        "SELECT pg_advisory_xact_lock(42)": "function pg_advisory_xact_lock",
        "COPY t (a) FROM STDIN (FORMAT binary)": "FROM STDIN",
        "CREATE TABLE t (a JSONB)": "type JSONB",
        "CREATE TABLE t (a INT[])": "type INT[]",
        "CREATE TABLE t (a TEXT)": "type TEXT",
        "CREATE TABLE t (a BYTEA)": "BYTEA",
        "UPDATE workers SET expires_at = LOCALTIMESTAMP": "function",
        "SELECT a FROM t FOR UPDATE": "FOR UPDATE",
        "SELECT DISTINCT ON (a) a FROM t": "DISTINCT ON",
    }
    for statement, why in refused.items():
        problems = redshift_problems(statement)
        assert problems and why in " ".join(problems), (statement, problems)
    for statement in (
        copy_parquet("staged_x", "s3://b/p/x.parquet", IAM_ROLE),
        REDSHIFT.create_table("dead_letters", schema.DEAD_LETTERS),
        'MERGE INTO "c" USING "s" ON "c"."k" = "s"."k" WHEN MATCHED THEN UPDATE SET'
        ' "v" = "s"."v" WHEN NOT MATCHED THEN INSERT ("k", "v") VALUES ("s"."k", "s"."v")',
        "UPDATE partition_leases SET expires_at = GETDATE() + %s * INTERVAL '1 second'",
        "BEGIN READ ONLY",
    ):
        assert redshift_problems(statement) == [], statement


def test_every_statement_sent_is_redshift_sql(
    warehouse: ParquetCopyShim, log: StatementLog
) -> None:
    """Commits (appends, re-attributions, MERGE upserts), a dimension load (SCD2 close and
    insert), batch ids, leases, reads and snapshots: each statement parses as Redshift."""
    warehouse.commit(a_batch(1, "1"))
    moves = schema.conform(
        pl.DataFrame({"event_id": ["v1"], "click_event_id": ["k-new"], "click_time": [at(1)]}),
        schema.CONVERSION_REATTRIBUTIONS,
    )
    second = a_batch(2, "2")
    second.reattributions = moves
    warehouse.commit(second)
    campaigns = pl.DataFrame(
        {
            "ad_id": [1, 2],
            "campaign": ["A", "B"],
            "product": ["p", "q"],
            "target_start_date": [at(0).date()] * 2,
            "target_end_date": [at(0).date()] * 2,
        }
    )
    warehouse.load_dimension("campaigns", campaigns, at(0))
    warehouse.load_dimension("campaigns", campaigns.with_columns(product=pl.lit("z")), at(60))
    assert warehouse.reserve_batch_ids(5) == 3
    leases = warehouse.partition_leases(WorkerIdentity("w1", "h", 1), 2, ttl_seconds=30)
    leases.register()
    assert leases.acquire(0) == 1
    assert leases.fair_share() == 2 and leases.free() == [1]
    leases.heartbeat()
    leases.leave()
    leases.close()
    with warehouse.snapshot() as read:
        assert read("SELECT COUNT(*) AS n FROM fact_clicks", []).item() == 4
    assert warehouse.dimension_revision() == 2
    sent = " ".join(log.statements)
    for construct in ("MERGE INTO", "COPY ", "UPDATE fact_conversions", "GETDATE()"):
        assert construct in sent, construct  # the checks below saw the real thing
    assert "FROM STDIN" not in sent
    assert len(log.statements) > 60
    assert log.problems() == {}


def test_dead_letters_are_cut_to_redshifts_limits() -> None:
    frame = schema.conform(
        pl.DataFrame(
            {
                "detail": ["é" * 40_000, "short"],  # 80,000 bytes
                "payload": [b"x" * (MAX_VARBYTE_BYTES + 5), b"ok"],
                "reason": ["r", "r"],
            }
        ),
        schema.DEAD_LETTERS,
    )
    fitted = fit_dead_letters(frame)
    detail = fitted["detail"].to_list()
    assert len(detail[0].encode()) == MAX_VARCHAR_BYTES - 1  # cut on a character boundary
    assert detail[0] == "é" * ((MAX_VARCHAR_BYTES - 1) // 2)
    assert detail[1] == "short"
    assert [len(p) for p in fitted["payload"].to_list()] == [MAX_VARBYTE_BYTES, 2]
    assert fitted.schema == frame.schema


def test_ddl_uses_redshift_types() -> None:
    ddl = REDSHIFT.create_table("dead_letters", schema.DEAD_LETTERS)
    assert '"detail" VARCHAR(65535)' in ddl
    assert '"payload" VARBYTE' in ddl
    assert "TEXT" not in ddl and "BYTEA" not in ddl


# -- URL and settings -----------------------------------------------------------------------
def test_the_url_names_the_cluster_staging_and_role(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        warehouse_url="redshift://ana:pw@cluster.example.eu-central-1.redshift.amazonaws.com/dev"
        f"?staging=s3://stage-bucket/adpulse/x&iam_role={IAM_ROLE}&sslmode=require",
    )
    target = redshift_target(settings)
    assert target.url == (
        "postgresql://ana:pw@cluster.example.eu-central-1.redshift.amazonaws.com:5439/dev"
        "?sslmode=require"
    )
    assert target.staging == S3Location("stage-bucket", "adpulse/x")
    assert target.iam_role == IAM_ROLE
    assert WAREHOUSE.backend(settings.warehouse_url).opener == (
        "adpulse.storage.warehouse:open_redshift"
    )
    from_settings = Settings(
        home=tmp_path,
        warehouse_url="redshift://ana@h:5440/dev",
        redshift_staging_url="s3://b",
        redshift_iam_role="arn:aws:iam::1:role/r",
        redshift_s3_region="us-east-1",
    )
    target = redshift_target(from_settings)
    assert target.url == "postgresql://ana@h:5440/dev"
    assert (target.staging, target.iam_role, target.s3_region) == (
        S3Location("b", ""),
        "arn:aws:iam::1:role/r",
        "us-east-1",
    )


@pytest.mark.parametrize(
    ("query", "missing"),
    [("?iam_role=arn:aws:iam::1:role/r", "staging"), ("?staging=s3://b/p", "IAM role")],
)
def test_a_url_without_staging_or_role_says_what_to_add(
    tmp_path: Path, query: str, missing: str
) -> None:
    settings = Settings(home=tmp_path, warehouse_url=f"redshift://ana:hunter2@h/dev{query}")
    with pytest.raises(ValueError, match=missing) as info:
        redshift_target(settings)
    assert "hunter2" not in str(info.value)


def test_open_warehouse_opens_redshift_from_the_url(aws: str, tmp_path: Path) -> None:
    """The opener builds the staging from the URL (endpoint_url: the local S3); the
    connection goes to PostgreSQL standing in for Redshift."""
    from pgtest import PG_URL, drop_schema, new_schema, require_postgres
    from redshifttest import prepare_schema

    from adpulse.storage.warehouse import open_warehouse

    require_postgres()
    bucket = new_bucket()
    schema_name = new_schema()
    prepare_schema(schema_name)
    rest = PG_URL.removeprefix("postgresql://")
    url = (
        f"redshift://{rest}?options=-csearch_path%3D{schema_name}"
        f"&staging=s3://{bucket}/in&iam_role={IAM_ROLE}&endpoint_url={aws}&region=eu-central-1"
    )
    try:
        wh = open_warehouse(Settings(home=tmp_path, warehouse_url=url))
        try:
            assert wh.dialect == "redshift"
            assert wh.next_batch_id() == 1  # its tables exist
            # Stage one object the way a commit does, then delete it.
            uri = wh.staging.put("staged_x", pl.DataFrame({"a": [1]}))
            assert uri.startswith(f"s3://{bucket}/in/")
            keys = s3_client().list_objects_v2(Bucket=bucket)["Contents"]
            assert [k["Key"] for k in keys] == [uri.removeprefix(f"s3://{bucket}/")]
        finally:
            wh.close()
    finally:
        drop_schema(schema_name)


def test_a_failed_load_of_a_value_is_a_data_refusal(warehouse: ParquetCopyShim) -> None:
    """Redshift reports a COPY that fails on a value as an internal error pointing at
    stl_load_errors (or a Spectrum scan error for Parquet): isolated, not a stop."""
    import psycopg

    load = psycopg.errors.InternalError(
        "Load into table 'staged_fact_clicks' failed. Check 'stl_load_errors' system table"
        " for details."
    )
    scan = psycopg.errors.InternalError("Spectrum Scan Error: ... value too long ...")
    assert warehouse.refuses_data(load) and warehouse.refuses_data(scan)
    assert warehouse.refuses_data(psycopg.errors.StringDataRightTruncation("too long"))
    assert not warehouse.refuses_data(psycopg.errors.InternalError("1023: serializable"))
    assert not warehouse.refuses_data(psycopg.OperationalError("connection lost"))


def test_an_over_long_dead_letter_commits_cut_to_size(warehouse: ParquetCopyShim) -> None:
    letter = schema.conform(
        pl.DataFrame(
            {
                "stream": ["clicks"],
                "partition": [0],
                "reason": ["payload_too_large"],
                "detail": ["d" * 70_000],  # longer than VARCHAR(65535) holds
                "payload": [b"p" * 70_000],
                "received_at": [at(0)],
            }
        ),
        schema.DEAD_LETTERS,
    )
    warehouse.commit(output(1, dead_letters=letter))
    stored = warehouse.query("SELECT detail, payload FROM dead_letters").row(0)
    assert (len(stored[0]), len(stored[1])) == (MAX_VARCHAR_BYTES, MAX_VARBYTE_BYTES)


def test_a_missing_bucket_opens_with_a_warning_and_a_commit_says_what_to_fix(
    aws: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with redshift_warehouse(bucket="adpulse-no-such-bucket") as wh:
        assert "could not list s3://adpulse-no-such-bucket" in caplog.text
        with pytest.raises(StagingError, match="s3:PutObject.*redshift_staging_url"):
            wh.commit(a_batch(1, "1"))
        assert count(wh, "fact_clicks") == 0
        assert wh.load_offsets() == {}


def test_the_check_refuses_what_the_postgresql_backend_sends() -> None:
    """The same check over the PostgreSQL backend finds what Redshift would refuse: its
    binary COPY FROM STDIN, TEXT and BYTEA columns and LOCALTIMESTAMP leases."""
    from pgtest import postgres_warehouse

    log = StatementLog()
    with log.recording(), postgres_warehouse() as pg:
        pg.commit(a_batch(1, "1"))
        leases = pg.partition_leases(WorkerIdentity("w1", "h", 1), 1, ttl_seconds=30)
        leases.register()
        leases.close()
    found = " ".join(why for whys in log.problems().values() for why in whys)
    for construct in ("FROM STDIN", "type TEXT", "BYTEA", "localtimestamp"):
        assert construct in found, construct
