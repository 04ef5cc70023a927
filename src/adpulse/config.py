"""One settings object for every command.

Precedence (highest first): command-line options, environment variables
(``ADPULSE_<NAME>``, e.g. ``ADPULSE_PARTITIONS=8``), the TOML file
(``$ADPULSE_HOME/adpulse.toml`` or ``--config FILE``), then the defaults below.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_FILE_NAME = "adpulse.toml"
#: Default of ``min_event_time``: older events are taken for broken clocks or test data.
DEFAULT_MIN_EVENT_TIME: Final = datetime(2000, 1, 1)
#: Upper bound of ``max_future_seconds`` (100 years): now + the tolerance must stay a
#: representable time.
MAX_FUTURE_SECONDS_LIMIT: Final = 100 * 365 * 86_400
MASK: Final = "***"
AlertStream = Literal["impressions", "clicks", "conversions"]
_URL_PASSWORD: Final = re.compile(r"(://[^:/?#@]*:)[^@/?#]*@")
_PARAM_PASSWORD: Final = re.compile(r"(password=)[^&\s]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with any password (``user:PASSWORD@`` or ``?password=...``) masked."""
    return _PARAM_PASSWORD.sub(rf"\g<1>{MASK}", _URL_PASSWORD.sub(rf"\g<1>{MASK}@", url))


def default_home() -> Path:
    return Path(os.environ.get("ADPULSE_HOME", Path.home() / ".adpulse")).expanduser()


class Settings(BaseSettings):
    """Effective configuration of adpulse."""

    model_config = SettingsConfigDict(env_prefix="ADPULSE_", extra="forbid")

    home: Path = Field(default_factory=default_home, description="Data directory.")
    partitions: int = Field(4, ge=1, le=1024, description="Partitions per stream.")
    transport_url: str = Field("", description="embedded://DIR (default: HOME/log).")
    warehouse_url: str = Field(
        "",
        description="duckdb:///FILE (default: HOME/warehouse.duckdb), postgresql://... or"
        " redshift://... (docs/redshift.md).",
    )
    warehouse_password: SecretStr | None = Field(None, description="Warehouse password, if any.")
    warehouse_secret_arn: str = Field(
        "",
        description="AWS Lambda: the Secrets Manager secret (ARN) holding the warehouse URL;"
        " read when a function starts, it replaces warehouse_url (docs/aws.md).",
    )
    redshift_staging_url: str = Field(
        "",
        pattern=r"^(|s3://[^/?#]+(/[^?#]*)?)$",
        description="Redshift warehouse: s3://BUCKET[/PREFIX] where each batch is staged as"
        " Parquet for COPY (the URL's ?staging= wins); docs/redshift.md.",
    )
    redshift_iam_role: str = Field(
        "",
        description="Redshift warehouse: ARN of the IAM role Redshift assumes to read the"
        " staging bucket (the URL's ?iam_role= wins).",
    )
    redshift_s3_region: str = Field(
        "", description="Redshift warehouse: the staging bucket's region (default: boto3's)."
    )
    redshift_s3_endpoint_url: str = Field(
        "",
        description="Redshift warehouse: S3 endpoint for staging (default: AWS's; e.g. a"
        " local test server).",
    )
    serving_url: str = Field(
        "",
        description="Serving store of live views: memory:// (default: in-process) or"
        " redis://HOST:PORT/DB[?prefix=NAME].",
    )
    serving_memory_window_seconds: int = Field(
        7_200,
        ge=60,
        le=86_400,
        description="In-process serving store: the event time it keeps at the full rollup"
        " key, back from the newest minute (the smaller projections keep 24 h); views"
        " needing that key from earlier read the warehouse.",
    )

    allowed_lateness_seconds: int = Field(600, ge=0, description="Lateness behind the watermark.")
    dedupe_horizon_seconds: int = Field(86_400, ge=0, description="How long event ids are kept.")
    dedupe_memory_bytes: int = Field(
        128 * 1024 * 1024,
        ge=0,
        description="Memory for the dedupe key tables (all streams); beyond it the oldest"
        " event-time hours are spilled to HOME/dedupe, where each key costs 12 bytes of"
        " disk and ~2 bytes of memory (0: no bound, nothing spilled).",
    )
    attribution_lookback_seconds: int = Field(7 * 86_400, ge=0, description="Click lookback.")
    idle_timeout_seconds: float = Field(
        5.0, gt=0, description="After this long without events, watermarks follow the clock."
    )
    max_future_seconds: int = Field(
        900,
        ge=0,
        le=MAX_FUTURE_SECONDS_LIMIT,
        description="Events further than this ahead of the clock are rejected"
        " (dead letter future_timestamp).",
    )
    min_event_time: datetime = Field(
        DEFAULT_MIN_EVENT_TIME,
        description="Events before this time (UTC; an offset, if given, is converted) are"
        " rejected (dead letter event_time_out_of_range).",
    )
    max_record_bytes: int = Field(64 * 1024, ge=256, le=1024 * 1024)
    batch_max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Upper bound of one micro-batch per stream, in bytes.",
    )
    live_batch_max_bytes: int = Field(
        4 * 1024 * 1024,
        ge=0,
        description="Live mode (`process` without --until-caught-up, the demo): upper bound"
        " of one micro-batch per stream, in bytes, so that while a backlog is worked off a"
        " batch stays short and the other streams' fresh events are queryable within"
        " seconds (0: batch_max_bytes only).",
    )
    duckdb_memory_limit: str = Field(
        "",
        pattern=r"^(|\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)|\d{1,3}%)$",
        description="DuckDB warehouse: memory its buffer manager may use ('512MB', '2GiB',"
        " '25%' of RAM). Default '': 25 % of RAM, at most 256 MiB. Beyond it DuckDB spills"
        " to HOME/warehouse.duckdb.tmp or fails with an out-of-memory error.",
    )
    duckdb_checkpoint_threshold: str = Field(
        "64MB",
        pattern=r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        description="DuckDB warehouse: WAL size at which it checkpoints. The rows committed"
        " since the last checkpoint stay in its memory until then, so a live run's DuckDB"
        " memory rises and falls by about this much.",
    )
    duckdb_threads: int = Field(
        0, ge=0, le=256, description="DuckDB warehouse: worker threads (0: one per core)."
    )
    batch_interval_seconds: float = Field(
        0.2, gt=0, description="Wait between polls when the log has no new data."
    )
    live_batch_interval_seconds: float = Field(
        0.2,
        ge=0,
        le=2,
        description="Live mode: a batch that drained the log (no backlog left) is followed"
        " by the next one this long after it started, not at once, so that a steady"
        " trickle of events (pixels) makes a few larger batches rather than many tiny ones,"
        " each with a fixed cost; it adds at most this to event-to-screen latency. A"
        " backlog is worked off without waiting (0: never wait).",
    )
    fsync: bool = Field(
        False,
        description="fsync the embedded log on every flush; the collector then answers 202"
        " only after an fsync (group commit), so acknowledged events survive a power loss.",
    )
    infra_timeout_seconds: float = Field(
        10.0,
        ge=0.5,
        le=600,
        description="Servers (PostgreSQL, Redis): connect timeout, and how long a silent"
        " connection may stay unanswered before it counts as lost (TCP keepalives,"
        " tcp_user_timeout, Redis socket timeouts).",
    )
    statement_timeout_seconds: float = Field(
        120.0,
        ge=1,
        le=86_400,
        description="PostgreSQL: the longest one statement may run (server-side"
        " statement_timeout and a client-side deadline for a server that stopped answering).",
    )
    infra_retry_seconds: float = Field(
        60.0,
        ge=0,
        le=86_400,
        description="How long a failed server operation is retried (exponential backoff)"
        " before the command gives up with one error line and exit status 2.",
    )
    worker_lease_seconds: float = Field(
        5.0,
        ge=0.5,
        le=300,
        description="Partition lease TTL when workers share partitions (PostgreSQL): a dead"
        " worker's partitions move to the survivors within about this long.",
    )

    api_cache_seconds: float = Field(
        1.0,
        ge=0,
        le=60,
        description="HTTP API: answers are shared at most this old (0: every request queries).",
    )
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="`adpulse process`: serve Prometheus metrics at http://127.0.0.1:PORT/metrics"
        " (0: none; `serve` and the demo have /metrics on the API).",
    )
    api_query_threads: int = Field(
        2, ge=1, le=64, description="HTTP API: warehouse queries run at once, at most."
    )
    collector_max_body_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1024,
        description="Collector: largest request body, before and after gzip (413 beyond).",
    )
    collector_max_records: int = Field(
        10_000, ge=1, description="Collector: most records in one request (413 beyond)."
    )
    collector_redirect_hosts: list[str] = Field(
        default_factory=list,
        description="Collector: hosts /v1/click may redirect to ('example.com', or"
        " '*.example.com' for its subdomains); any other landing URL gets 400.",
    )
    auth: Literal["auto", "required", "off"] = Field(
        "auto",
        description="HTTP: 'auto' needs keys off loopback only, 'required' everywhere, 'off'"
        " never (see docs/security.md).",
    )
    auth_refresh_seconds: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="HTTP: how often servers re-read the API keys (a revoked key stops"
        " working within this long).",
    )
    key_rate_limit: float = Field(
        0.0,
        ge=0,
        le=1_000_000,
        description="HTTP: requests a second per API key, bursts of twice that (at least"
        " 10); over it, 429 with Retry-After (0: unlimited).",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="HTTP: web origins (https://shop.example) whose pages may call the"
        " collector (/v1/...) from a browser; empty: none.",
    )
    api_docs: bool = Field(
        True,
        description="HTTP: serve the API's description (/openapi.json) and Swagger UI (/docs).",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="HTTP: Host names the server answers to besides loopback ones; on"
        " loopback only these (DNS rebinding), elsewhere any when empty.",
    )
    http_header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=300,
        description="HTTP: a request's headers must arrive within this long of the"
        " connection opening or the previous response (slow clients are closed).",
    )
    http_keep_alive_seconds: float = Field(
        5.0, gt=0, le=300, description="HTTP: an idle connection is closed after this long."
    )
    http_max_header_bytes: int = Field(
        16 * 1024,
        ge=4096,
        le=1024 * 1024,
        description="HTTP: larger request headers get 431 and the connection is closed.",
    )
    http_max_connections: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="HTTP: connections and requests at once; beyond it requests get 503.",
    )
    stream_clients_per_address: int = Field(
        8,
        ge=1,
        le=256,
        description="HTTP: live streams open at once from one client address (then 429).",
    )
    stream_clients_per_key: int = Field(
        32,
        ge=1,
        le=256,
        description="HTTP: live streams open at once with one API key (then 429).",
    )
    alert_check_seconds: float = Field(
        5.0, gt=0, le=3600, description="Alerts: how often the rules are evaluated."
    )
    alert_min_interval_seconds: float = Field(
        300.0,
        ge=0,
        le=86_400,
        description="Alerts: a rule fires at most once per this long (flapping rules).",
    )
    alert_processor_silent_seconds: float = Field(
        60.0,
        ge=0,
        description="Alerts: the processor counts as stopped after this long without a"
        " commit (0: off).",
    )
    alert_dead_letter_share: float = Field(
        0.05, ge=0, le=1, description="Alerts: the highest share of dead letters received."
    )
    alert_dead_letter_window_seconds: float = Field(
        300.0, gt=0, description="Alerts: the window the dead-letter share is taken over."
    )
    alert_dead_letter_min_records: int = Field(
        100, ge=1, description="Alerts: records received in the window before the share counts."
    )
    alert_stream_silent_seconds: float = Field(
        600.0, ge=0, description="Alerts: a stream without events this long alerts (0: off)."
    )
    alert_silent_streams: list[AlertStream] = Field(
        default_factory=lambda: list[AlertStream](["impressions", "clicks"]),
        description="Alerts: the streams alert_stream_silent_seconds applies to.",
    )
    alert_lag_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="Alerts: the processor more than this many bytes behind the log"
        " for alert_lag_seconds alerts (0: off).",
    )
    alert_lag_records: int = Field(
        1_000_000,
        ge=0,
        description="Alerts: the processor more than this many records behind the log"
        " for alert_lag_seconds alerts (0: off).",
    )
    alert_lag_age_seconds: float = Field(
        300.0,
        ge=0,
        description="Alerts: the processor's oldest unprocessed record appended more than"
        " this many seconds before the newest, for alert_lag_seconds, alerts (0: off).",
    )
    alert_lag_seconds: float = Field(
        120.0, ge=0, description="Alerts: how long the lag may stay over a lag bound."
    )
    alert_crash_restarts: int = Field(
        3,
        ge=0,
        description="Alerts: this many worker restarts within alert_crash_window_seconds"
        " is a crash loop (0: off).",
    )
    alert_crash_window_seconds: float = Field(
        600.0, gt=0, description="Alerts: the window worker restarts are counted over."
    )
    alert_webhook_url: str = Field("", description="Alerts: webhook to POST alerts to.")
    alert_webhook_secret: SecretStr | None = Field(
        None, description="Alerts: HMAC-SHA256 key signing webhook requests."
    )
    alert_sns_topic_arn: str = Field("", description="Alerts: SNS topic to publish alerts to.")
    alert_sns_region: str = Field("", description="Alerts: SNS region (default: the ARN's).")
    alert_sns_endpoint_url: str = Field(
        "", description="Alerts: SNS endpoint (default: AWS's; e.g. a local test server)."
    )
    trending_window_minutes: int = Field(15, ge=1)
    min_clicks: int = Field(20, ge=0, description="Minimum clicks for rate rankings.")

    @field_validator("min_event_time")
    @classmethod
    def min_event_time_utc(cls, value: datetime) -> datetime:
        """Event times are compared as naive UTC: an aware value is converted, and the
        year must leave room for the query layer's minute arithmetic."""
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        if not datetime(1900, 1, 1) <= value <= datetime(9000, 1, 1):
            raise ValueError(f"must lie between 1900-01-01 and 9000-01-01, got {value}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = os.environ.get("ADPULSE_CONFIG")
        if toml_file is None:
            toml_file = str(default_home() / CONFIG_FILE_NAME)
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=toml_file),
        )

    # Derived locations -------------------------------------------------------------
    @property
    def log_dir(self) -> Path:
        url = self.transport_url
        if url.startswith("embedded://") and len(url) > len("embedded://"):
            return Path(url.removeprefix("embedded://"))
        return self.home / "log"

    @property
    def warehouse_path(self) -> Path:
        url = self.warehouse_url
        if url.startswith("duckdb:///"):
            return Path(url.removeprefix("duckdb://"))
        return self.home / "warehouse.duckdb"

    def masked(self) -> dict[str, Any]:
        """Settings as a dict, secrets masked, for display.

        Secret fields (``warehouse_password``) show as ``***`` when set, and a password
        inside any ``*_url`` setting is replaced by ``***``.
        """
        values = self.model_dump(mode="json")
        for name, field in type(self).model_fields.items():
            if field.annotation in (SecretStr, SecretStr | None):
                values[name] = None if getattr(self, name) is None else MASK
            elif name.endswith("_url") and isinstance(values[name], str):
                values[name] = redact_url(values[name])
        return values


def load_settings(
    home: Path | None = None, config: Path | None = None, **overrides: Any
) -> Settings:
    """Build the settings; ``home``/``config`` come from ``--home``/``--config``.

    The TOML file is looked up in ``home`` (or at ``config``): both are put in the
    environment only while the settings are read, then the environment is restored.
    """
    saved = {k: os.environ.get(k) for k in ("ADPULSE_CONFIG", "ADPULSE_HOME")}
    try:
        if config is not None:
            os.environ["ADPULSE_CONFIG"] = str(config)
        if home is not None:
            os.environ["ADPULSE_HOME"] = str(home)
        values = {k: v for k, v in overrides.items() if v is not None}
        if home is not None:
            values["home"] = home
        return Settings(**values)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
