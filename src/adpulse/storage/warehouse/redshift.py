"""The Redshift warehouse: the PostgreSQL backend, loading the way Redshift wants.

Redshift speaks PostgreSQL's protocol and most of its DML, so :class:`RedshiftWarehouse`
inherits :class:`~.postgres.PostgresWarehouse` (connections, retries, deadlines, reads,
the commit's single transaction, ``MERGE`` upserts) and states only its differences
(the dlt destinations' shape: Redshift on PostgreSQL):

- loading: Redshift has no ``COPY ... FROM STDIN``. Every frame a commit writes is put
  on S3 as Parquet (:mod:`.s3staging`), copied into a ``TEMP`` staging table with
  ``COPY "staged_x" FROM 's3://...' IAM_ROLE '...' FORMAT AS PARQUET`` (Parquet maps
  columns by position, so the staging table has exactly the frame's columns), then
  moved into its table with ``INSERT ... SELECT`` (appends), ``MERGE`` (checkpoints,
  watermarks) or ``UPDATE ... FROM`` (re-attributions, SCD2 closes). All of it, the
  offsets and watermarks included, is one transaction; the staged objects are deleted
  when it ends, committed or not;
- column types (:data:`REDSHIFT`): ``VARCHAR(65535)`` for strings (Redshift's ``TEXT``
  is ``VARCHAR(256)``), ``VARBYTE`` (64,000 bytes) for the dead-letter payload (no
  ``BYTEA``);
  dead-letter texts and payloads are cut to those limits (:func:`fit_dead_letters`);
- the clock of the lease SQL (:data:`REDSHIFT_CLOCK`): ``GETDATE()``, as
  ``LOCALTIMESTAMP`` is a leader-node-only function there;
- a failed ``COPY`` of a value Redshift cannot store is a data refusal
  (:meth:`RedshiftWarehouse.refuses_data`), isolated record by record like PostgreSQL's.

Everything else is PostgreSQL's SQL as it is, written for the subset both accept (no
``ON CONFLICT``, no ``RETURNING``, no advisory locks, no arrays or JSON types, no identity
columns: batch ids come from a counter row). What only a real Redshift can confirm is
listed in docs/redshift.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import polars as pl
from pydantic import SecretStr

from adpulse.config import redact_url
from adpulse.outages import ServerTimeouts
from adpulse.storage.warehouse.leases import DatabaseClock
from adpulse.storage.warehouse.postgres import PostgresWarehouse
from adpulse.storage.warehouse.s3staging import S3Location, S3Staging
from adpulse.storage.warehouse.sql import Dialect, SqlWarehouse, quote

if TYPE_CHECKING:
    from adpulse.config import Settings

log = logging.getLogger(__name__)

__all__ = [
    "MAX_VARBYTE_BYTES",
    "MAX_VARCHAR_BYTES",
    "REDSHIFT",
    "REDSHIFT_CLOCK",
    "RedshiftTarget",
    "RedshiftWarehouse",
    "copy_parquet",
    "fit_dead_letters",
    "redshift_target",
]

#: Redshift's longest VARCHAR, and the length of a VARBYTE declared without one, in bytes.
MAX_VARCHAR_BYTES: Final = 65_535
MAX_VARBYTE_BYTES: Final = 64_000
#: Redshift's default port.
DEFAULT_PORT: Final = 5439

REDSHIFT: Final = Dialect(
    name="redshift",
    type_names={
        pl.String: f"VARCHAR({MAX_VARCHAR_BYTES})",
        pl.Int64: "BIGINT",
        pl.Int32: "INTEGER",
        pl.Datetime: "TIMESTAMP",
        pl.Date: "DATE",
        pl.Float64: "DOUBLE PRECISION",
        pl.Boolean: "BOOLEAN",
        # Without a length (64,000 bytes): the type name alone is also what a test
        # database can define (a PostgreSQL domain takes no length).
        pl.Binary: "VARBYTE",
    },
)

#: Redshift's current time on compute nodes (sessions in UTC).
REDSHIFT_CLOCK: Final = DatabaseClock("GETDATE()")

#: URL parameters adpulse reads; every other one is passed on to libpq (sslmode, ...).
_OWN_PARAMS: Final = ("staging", "iam_role", "region", "endpoint_url")
_SETTING: Final = "setting warehouse_url, env ADPULSE_WAREHOUSE_URL"


def _literal(text: str) -> str:
    """A SQL string literal (the COPY source and role cannot be bound parameters)."""
    return "'" + text.replace("'", "''") + "'"


def copy_parquet(table: str, uri: str, iam_role: str) -> str:
    """Redshift's load of one staged Parquet object into ``table`` (columns by position)."""
    return (
        f"COPY {quote(table)} FROM {_literal(uri)} IAM_ROLE {_literal(iam_role)} FORMAT AS PARQUET"
    )


@dataclass(frozen=True, slots=True)
class RedshiftTarget:
    """Where a ``redshift://`` URL points: the libpq URL, the staging place, the role."""

    url: str
    staging: S3Location
    iam_role: str
    s3_region: str = ""
    s3_endpoint_url: str = ""


def redshift_target(settings: Settings) -> RedshiftTarget:
    """Read ``settings.warehouse_url`` (``redshift://...``) with the ``redshift_*`` settings.

    The URL's ``staging``, ``iam_role``, ``region`` and ``endpoint_url`` parameters win
    over the settings of the same meaning; the others go to libpq. The port defaults to
    5439. Raises ``ValueError`` naming what is missing.
    """
    parts = urlsplit(settings.warehouse_url)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    own = {k: params.pop(k) for k in _OWN_PARAMS if k in params}
    staging = own.get("staging") or settings.redshift_staging_url
    iam_role = own.get("iam_role") or settings.redshift_iam_role
    shown = redact_url(settings.warehouse_url)
    if not staging:
        raise ValueError(
            f"the Redshift warehouse {shown!r} needs an S3 staging place: add"
            " ?staging=s3://BUCKET/PREFIX to the URL or set redshift_staging_url"
            " (env ADPULSE_REDSHIFT_STAGING_URL)"
        )
    if not iam_role:
        raise ValueError(
            f"the Redshift warehouse {shown!r} needs the IAM role Redshift reads the staging"
            " bucket with: add ?iam_role=ARN to the URL or set redshift_iam_role"
            " (env ADPULSE_REDSHIFT_IAM_ROLE)"
        )
    netloc = parts.netloc
    if parts.port is None and netloc and not netloc.endswith("]:"):
        netloc = f"{netloc}:{DEFAULT_PORT}"
    url = urlunsplit(("postgresql", netloc, parts.path, urlencode(params), ""))
    return RedshiftTarget(
        url=url,
        staging=S3Location.parse(staging),
        iam_role=iam_role,
        s3_region=own.get("region") or settings.redshift_s3_region,
        s3_endpoint_url=own.get("endpoint_url") or settings.redshift_s3_endpoint_url,
    )


def _fit_bytes(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    raw = value.encode("utf-8")
    return value if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore")


def fit_dead_letters(frame: pl.DataFrame) -> pl.DataFrame:
    """Dead letters cut to what Redshift stores: texts to :data:`MAX_VARCHAR_BYTES`
    (on a UTF-8 boundary), the payload to :data:`MAX_VARBYTE_BYTES`. A dead letter's
    commit must never fail; one longer than that is rare (``max_record_bytes`` is
    64 KiB by default) and keeps its beginning."""
    if frame.height == 0:
        return frame
    too_long = [
        c
        for c, t in frame.schema.items()
        if t == pl.String and (frame[c].str.len_bytes().max() or 0) > MAX_VARCHAR_BYTES  # type: ignore[operator]
    ]
    binary = [c for c, t in frame.schema.items() if t == pl.Binary]
    # Only a column holding an over-long text goes through Python, row by row.
    return frame.with_columns(
        *(
            pl.col(c)
            .map_elements(lambda v: _fit_bytes(v, MAX_VARCHAR_BYTES), return_dtype=pl.String)
            .alias(c)
            for c in too_long
        ),
        *(pl.col(c).bin.slice(0, MAX_VARBYTE_BYTES).alias(c) for c in binary),
    )


class RedshiftWarehouse(PostgresWarehouse):
    """A warehouse in Amazon Redshift (provisioned or Serverless), loading through S3.

    ``url`` is a libpq URL of the Redshift endpoint (``postgresql://USER@HOST:5439/DB``;
    :func:`redshift_target` makes it from ``redshift://...``), ``staging`` where frames
    are staged, ``iam_role`` the ARN Redshift assumes to read them (associated with the
    cluster or workgroup, allowed ``s3:GetObject`` on the staging prefix). The other
    arguments are :class:`~.postgres.PostgresWarehouse`'s.
    """

    dialect = "redshift"
    sql_dialect = REDSHIFT
    clock = REDSHIFT_CLOCK
    #: Redshift reports its encoding as ``UNICODE``, a name psycopg 3 does not know, and
    #: has no ``DEALLOCATE ALL`` for psycopg's prepared statements: ask for UTF8, and
    #: prepare nothing.
    driver_options: ClassVar[dict[str, Any]] = {
        "client_encoding": "utf8",
        "prepare_threshold": None,
    }

    def __init__(
        self,
        url: str,
        staging: S3Staging,
        iam_role: str,
        password: SecretStr | None = None,
        *,
        schema: str | None = None,
        read_only: bool = False,
        timeouts: ServerTimeouts | None = None,
    ) -> None:
        self.staging = staging
        self.iam_role = iam_role
        self._staged: list[str] = []  # objects of the open transaction
        super().__init__(url, password, schema=schema, read_only=read_only, timeouts=timeouts)

    def create_schema(self) -> None:
        super().create_schema()
        if self.read_only:
            return
        try:
            removed = self.staging.remove_orphans()
        except Exception as exc:  # a clean-up: never a reason not to open
            log.warning(
                "could not list s3://%s for staged objects left behind (%s); they stay"
                " until a later start or the bucket's lifecycle rule removes them",
                self.staging.location.bucket,
                type(exc).__name__,
            )
            return
        if removed:
            log.info("removed %d staged objects left by an earlier process", removed)

    def refuses_data(self, exc: BaseException) -> bool:
        """PostgreSQL's data errors, and a ``COPY`` that Redshift failed on a value (it
        reports those as internal errors pointing at ``stl_load_errors``, or as a
        Spectrum scan error for Parquet)."""
        if super().refuses_data(exc):
            return True
        text = str(exc).lower()
        return isinstance(exc, self._psycopg.InternalError) and (
            "stl_load_errors" in text or "spectrum scan error" in text
        )

    def copy_from_s3(self, table: str, uri: str, execute: Callable[..., None]) -> None:
        """Load the Parquet object at ``uri`` into ``table`` (a staging table with the
        object's columns, in order) by running ``COPY`` with ``execute``, inside the
        open transaction. A seam of its own: a test double of Redshift's COPY replaces
        only this step."""
        execute(copy_parquet(table, uri, self.iam_role))

    # -- SqlWarehouse primitives -----------------------------------------------------------
    @contextmanager
    def _transaction(self) -> Iterator[None]:
        staged: list[str] = []
        try:
            with super()._transaction():
                try:
                    yield
                finally:
                    staged, self._staged = self._staged, []
        finally:
            # Committed or rolled back, nothing reads the staged objects any more.
            if staged:
                self.staging.delete(staged)

    @contextmanager
    def _stage(self, name: str, frame: pl.DataFrame) -> Iterator[None]:
        columns = ", ".join(
            f"{quote(c)} {self.sql_dialect.column_type(t)}" for c, t in frame.schema.items()
        )
        self._execute(f"CREATE TEMP TABLE {quote(name)} ({columns})")
        uri = self.staging.put(name, frame)
        self._staged.append(uri)
        self.copy_from_s3(name, uri, self._execute)
        yield
        # Only reached without error; after one, the rollback drops the table.
        self._execute(f"DROP TABLE {quote(name)}")

    def _append(self, table: str, frame: pl.DataFrame, columns: Mapping[str, pl.DataType]) -> None:
        if table == "dead_letters":
            frame = fit_dead_letters(frame)
        # Staged and moved with INSERT ... SELECT: COPY FROM STDIN does not exist here.
        SqlWarehouse._append(self, table, frame, columns)

    def _explain(self, exc: BaseException, bare: bool = False) -> str:
        text = super()._explain(exc, bare)
        return text.replace("PostgreSQL warehouse", "Redshift warehouse")
