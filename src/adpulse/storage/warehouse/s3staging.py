"""Staging frames on S3 as Parquet, for warehouses that load from S3 (Redshift's ``COPY``).

Each staged frame is one object, ``PREFIX/<random hex>/<name>.parquet``: the random
directory makes the key unique, and no other key starts with it (Redshift's ``COPY FROM
's3://...'`` loads every object whose key *starts* with the given one). Objects are
deleted once the transaction that loaded them has ended (committed or rolled back);
one left behind by a process killed in between is never read again (no statement names
it any more) and :meth:`S3Staging.remove_orphans` deletes it later.

boto3 is imported only here, when a warehouse stages. Credentials come from boto3's own
chain (environment, profile, instance or task role) and are never logged or stored;
logs and errors name the bucket and keys only.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlsplit

import polars as pl

log = logging.getLogger(__name__)

#: Parquet compression: Redshift's COPY reads Snappy-compressed Parquet.
COMPRESSION: Final = "snappy"
#: Objects older than this are not part of any running transaction (a statement lasts
#: at most ``statement_timeout_seconds``); :meth:`S3Staging.remove_orphans` deletes them.
ORPHAN_AGE: Final = timedelta(hours=1)


class StagingError(RuntimeError):
    """A frame could not be staged on S3; the message names the bucket and what to do."""


@dataclass(frozen=True, slots=True)
class S3Location:
    """``s3://BUCKET/PREFIX``: where staged objects go."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"not an S3 location (s3://BUCKET[/PREFIX]): {url!r}")
        return cls(parts.netloc, parts.path.strip("/"))

    def key(self, name: str) -> str:
        return "/".join(p for p in (self.prefix, uuid.uuid4().hex, f"{name}.parquet") if p)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    """``frame`` as one Parquet file (columns in the frame's order, Polars' types)."""
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression=COMPRESSION, statistics=False)
    return buffer.getvalue()


class S3Staging:
    """Puts frames on S3 as Parquet and deletes them again (see the module docs).

    ``region`` and ``endpoint_url`` (a local S3-compatible server) are optional; ``client``
    replaces the boto3 client built from them.
    """

    def __init__(
        self,
        location: S3Location,
        *,
        region: str = "",
        endpoint_url: str = "",
        client: Any = None,
    ) -> None:
        self.location = location
        if client is None:
            import boto3

            client = boto3.client(
                "s3", region_name=region or None, endpoint_url=endpoint_url or None
            )
        self._client = client

    def put(self, name: str, frame: pl.DataFrame) -> str:
        """Stage ``frame`` as a new object; its ``s3://`` URI."""
        key = self.location.key(name)
        try:
            self._client.put_object(Bucket=self.location.bucket, Key=key, Body=parquet_bytes(frame))
        except Exception as exc:
            raise StagingError(
                f"cannot stage {name} on s3://{self.location.bucket}/{self.location.prefix}"
                f" ({type(exc).__name__}: {_reason(exc)}); check the bucket, its region and"
                " that this process may s3:PutObject there (setting redshift_staging_url)"
            ) from None
        return self.location.uri(key)

    def read(self, uri: str) -> pl.DataFrame:
        """The frame staged at ``uri`` (for checks and tests)."""
        bucket, key = _split(uri)
        body = self._client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return pl.read_parquet(io.BytesIO(body))

    def delete(self, uris: Sequence[str]) -> None:
        """Delete staged objects; a failure is logged, not raised (an orphan is harmless
        and :meth:`remove_orphans` deletes it later)."""
        keys = [_split(u)[1] for u in uris]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1000 keys at most
            chunk = keys[start : start + 1000]
            try:
                self._client.delete_objects(
                    Bucket=self.location.bucket,
                    Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
                )
            except Exception as exc:
                log.warning(
                    "could not delete %d staged objects from s3://%s (%s); they are removed"
                    " later as orphans",
                    len(chunk),
                    self.location.bucket,
                    type(exc).__name__,
                )

    def keys(self) -> list[str]:
        """Every staged object's key under the prefix."""
        return [item["Key"] for item in self._listing()]

    def remove_orphans(self, older_than: timedelta = ORPHAN_AGE) -> int:
        """Delete staged objects older than ``older_than`` (left by a killed process);
        how many were deleted."""
        cutoff = datetime.now(UTC) - older_than
        old = [
            self.location.uri(item["Key"])
            for item in self._listing()
            if item["LastModified"] < cutoff and item["Key"].endswith(".parquet")
        ]
        self.delete(old)
        return len(old)

    def _listing(self) -> list[dict[str, Any]]:
        prefix = f"{self.location.prefix}/" if self.location.prefix else ""
        items: list[dict[str, Any]] = []
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.location.bucket, Prefix=prefix):
            items.extend(page.get("Contents", []))
        return items


def _split(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    return parts.netloc, parts.path.lstrip("/")


def _reason(exc: BaseException) -> str:
    """botocore's error code and message (never credentials: they are not in them)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        return f"{error.get('Code', '')} {error.get('Message', '')}".strip()
    return str(exc).splitlines()[0] if str(exc) else ""
