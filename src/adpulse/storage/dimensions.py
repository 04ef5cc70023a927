"""Dimension files (campaigns, users) and their slowly-changing (SCD type 2) history.

Dialect-free: reading a CSV into a typed frame and diffing it against the current
versions are pure functions; a warehouse only applies the result in one transaction.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

import polars as pl

from adpulse.storage.warehouse import schema
from adpulse.storage.warehouse.base import DimensionKind

#: valid_from of every key's first version: history before the first load joins it too.
EPOCH: Final = datetime(1970, 1, 1)

#: Dimension files are read whole into memory; this bounds it (override per call).
DEFAULT_MAX_DIMENSION_BYTES: Final = 256 * 1024 * 1024

_SCD_COLUMNS: Final = ("valid_from", "valid_to", "version", "loaded_at")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INTEGER = re.compile(r"[+-]?\d+")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True, slots=True)
class DimensionSpec:
    """Where a dimension lives and which of its columns identify and describe a key."""

    kind: DimensionKind
    table: str
    key: str
    schema: dict[str, pl.DataType]

    @property
    def attributes(self) -> tuple[str, ...]:
        """Columns whose change makes a new version (everything but key and SCD columns)."""
        return tuple(c for c in self.schema if c != self.key and c not in _SCD_COLUMNS)

    @property
    def file_columns(self) -> tuple[str, ...]:
        """The columns of the dimension's CSV file (key first)."""
        return (self.key, *self.attributes)

    @property
    def file_schema(self) -> dict[str, pl.DataType]:
        return {c: self.schema[c] for c in self.file_columns}


DIMENSIONS: Final[dict[DimensionKind, DimensionSpec]] = {
    "campaigns": DimensionSpec("campaigns", "dim_campaigns", "ad_id", schema.DIM_CAMPAIGNS),
    "users": DimensionSpec("users", "dim_users", "user_id", schema.DIM_USERS),
}


class DimensionFileError(ValueError):
    """A dimension file that cannot be loaded; the message names file, line and column."""


def utc_naive(moment: datetime) -> datetime:
    """``moment`` as stored: UTC without tzinfo (naive values are taken as UTC already)."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


# --- reading CSV files -----------------------------------------------------------------
def read_dimension_csv(
    path: Path, *, max_bytes: int = DEFAULT_MAX_DIMENSION_BYTES
) -> tuple[DimensionKind, pl.DataFrame]:
    """Read a campaigns or users CSV file into a typed frame.

    The kind is recognised by the header (columns in any order, case-insensitive). The
    original's format, with a space after each comma, is accepted verbatim; quoted
    fields may hold commas. Types: ``ad_id`` and ``age`` integers, dates ISO
    ``YYYY-MM-DD``, other columns text; an empty field is NULL, except the key, which is
    required. ``interests`` is normalised to ``a;b`` (blanks around items dropped).

    Returns the kind and a frame with the file's columns in the order of
    ``DIMENSIONS[kind].file_columns``. Raises :class:`DimensionFileError` naming the file,
    line and column of the first bad value, for an unknown header, a duplicate key or a
    file larger than ``max_bytes``.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise DimensionFileError(
                f"{path}: file is {size:,} bytes, more than the {max_bytes:,}-byte limit for"
                " dimension files; split it (files may hold only some keys) or raise the limit"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise DimensionFileError(f"{path}: cannot read dimension file: {exc.strerror}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DimensionFileError(
            f"{path}:{line}: not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8"
        ) from exc
    return parse_dimension_csv(text, source=str(path))


def parse_dimension_csv(text: str, *, source: str = "<text>") -> tuple[DimensionKind, pl.DataFrame]:
    """:func:`read_dimension_csv` on text already in memory; ``source`` names it in errors."""
    # skipinitialspace drops the blank after each comma, the original's own format.
    text = text.removeprefix("\ufeff")  # a BOM, as spreadsheet exports write it
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise DimensionFileError(f"{source}:1: unreadable header: {exc}") from exc
    if header is None or not any(h.strip() for h in header):
        raise DimensionFileError(f"{source}: empty file; expected a header row")
    names = [h.strip().lower() for h in header]
    spec = _spec_for_header(names, source)
    positions = [names.index(c) for c in spec.file_columns]
    parsers = [_PARSERS[(spec.kind, c)] for c in spec.file_columns]
    columns: list[list[Any]] = [[] for _ in spec.file_columns]
    first_line: dict[Any, int] = {}
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DimensionFileError(f"{source}:{reader.line_num}: {exc}") from exc
        line = reader.line_num
        if not any(field.strip() for field in row):
            continue  # blank lines, e.g. a trailing one, are not rows
        if len(row) != len(names):
            raise DimensionFileError(
                f"{source}:{line}: expected {len(names)} fields ({', '.join(names)}),"
                f" found {len(row)}"
            )
        for values, position, column, parse in zip(
            columns, positions, spec.file_columns, parsers, strict=True
        ):
            raw = row[position].strip()
            if "\x00" in raw:  # the same rule as for events' string fields
                raise DimensionFileError(
                    f"{source}:{line}: column {column!r}: holds a NUL character (U+0000),"
                    " which a warehouse cannot store; remove it from the file"
                )
            try:
                value = parse(raw)
            except ValueError as exc:
                raise DimensionFileError(
                    f"{source}:{line}: column {column!r}: {exc} (got {raw[:80]!r})"
                ) from None
            if column == spec.key and value is None:
                raise DimensionFileError(f"{source}:{line}: column {column!r}: key is empty")
            values.append(value)
        key = columns[0][-1]
        if key in first_line:
            raise DimensionFileError(
                f"{source}:{line}: column {spec.key!r}: duplicate key {key!r}"
                f" (first on line {first_line[key]}); a file holds one row per key"
            )
        first_line[key] = line
    frame = pl.DataFrame(
        dict(zip(spec.file_columns, columns, strict=True)), schema=spec.file_schema
    )
    return spec.kind, frame


def _spec_for_header(names: list[str], source: str) -> DimensionSpec:
    for spec in DIMENSIONS.values():
        if sorted(names) == sorted(spec.file_columns):
            return spec
    expected = " or ".join(
        f"{spec.kind} ({', '.join(spec.file_columns)})" for spec in DIMENSIONS.values()
    )
    raise DimensionFileError(f"{source}:1: header ({', '.join(names)}) is not {expected}")


def _text(raw: str) -> str | None:
    return raw or None


def _int64(raw: str) -> int | None:
    if not raw:
        return None
    if not _INTEGER.fullmatch(raw):
        raise ValueError("not an integer")
    value = int(raw)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError("integer out of range")
    return value


def _age(raw: str) -> int | None:
    value = _int64(raw)
    if value is not None and not 0 <= value <= 150:
        raise ValueError("age must be between 0 and 150")
    return value


def _iso_date(raw: str) -> date | None:
    if not raw:
        return None
    if not _ISO_DATE.fullmatch(raw):
        raise ValueError("not an ISO date (YYYY-MM-DD)")
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise ValueError("not a valid calendar date") from None


def _interests(raw: str) -> str | None:
    items = [item.strip() for item in raw.split(";")]
    return ";".join(item for item in items if item) or None


_PARSERS: Final[dict[tuple[DimensionKind, str], Callable[[str], Any]]] = {
    ("campaigns", "ad_id"): _int64,
    ("campaigns", "campaign"): _text,
    ("campaigns", "product"): _text,
    ("campaigns", "target_start_date"): _iso_date,
    ("campaigns", "target_end_date"): _iso_date,
    ("users", "user_id"): _text,
    ("users", "age"): _age,
    ("users", "gender"): _text,
    ("users", "interests"): _interests,
}


# --- SCD type 2 --------------------------------------------------------------------------
def scd2_changes(
    current: pl.DataFrame,
    incoming: pl.DataFrame,
    kind: DimensionKind,
    effective_from: datetime,
    loaded_at: datetime,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """What loading ``incoming`` changes in a dimension whose versions are ``current``.

    ``current`` holds the dimension's versions (at least every current one, i.e.
    ``valid_to`` NULL; others are ignored); ``incoming`` the file's columns
    (``DIMENSIONS[kind].file_columns``). Returns ``(keys_to_close, rows_to_insert)``:

    - a key not in ``current`` gets version 1, valid from :data:`EPOCH`;
    - a key whose attributes differ (NULL-aware) from its current version: that version
      is to be closed at ``effective_from`` (its key is in ``keys_to_close``) and a new
      version ``n + 1`` valid from ``effective_from`` is inserted;
    - an identical row changes nothing, and keys absent from ``incoming`` are left alone
      (a file may hold only some keys).

    ``keys_to_close`` has the single key column; ``rows_to_insert`` follows the
    dimension's schema with ``valid_to`` NULL. Raises ``ValueError`` for duplicate or
    NULL keys, for missing columns, or when ``effective_from`` is not after the
    ``valid_from`` of a version it would close.
    """
    spec = DIMENSIONS[kind]
    key, attributes = spec.key, spec.attributes
    missing = [c for c in spec.file_columns if c not in incoming.columns]
    if missing:
        raise ValueError(f"{kind} rows lack columns {missing}")
    rows = incoming.select(pl.col(c).cast(spec.schema[c]) for c in spec.file_columns)
    if rows[key].null_count():
        raise ValueError(f"{kind}: {rows[key].null_count()} rows have no {key}")
    duplicated = rows.filter(pl.col(key).is_duplicated())[key].unique().sort()
    if duplicated.len():
        shown = ", ".join(repr(k) for k in duplicated.head(5).to_list())
        raise ValueError(f"{kind}: duplicate {key} in one load: {shown}")
    effective_from = utc_naive(effective_from)
    loaded_at = utc_naive(loaded_at)

    if current.width == 0:
        current = schema.empty(spec.schema)
    # One current version per key; if a bad history has several, the latest wins.
    live = (
        current.filter(pl.col("valid_to").is_null())
        .sort("version")
        .unique(key, keep="last")
        .select(
            pl.col(key).cast(spec.schema[key]),
            *(pl.col(c).cast(spec.schema[c]).alias(f"{c}__current") for c in attributes),
            pl.col("version").cast(pl.Int32).alias("version__current"),
            pl.col("valid_from").cast(pl.Datetime("us")).alias("valid_from__current"),
        )
    )
    joined = rows.join(live, on=key, how="left")
    is_new = pl.col("version__current").is_null()
    differs = pl.any_horizontal(pl.col(c).ne_missing(pl.col(f"{c}__current")) for c in attributes)
    new = joined.filter(is_new)
    changed = joined.filter(~is_new & differs)

    too_early = changed.filter(pl.col("valid_from__current") >= effective_from)
    if too_early.height:
        example = too_early.row(0, named=True)
        raise ValueError(
            f"{kind}: effective_from {effective_from} is not after the current version of"
            f" {key} {example[key]!r} (valid from {example['valid_from__current']});"
            " changes must take effect later than the versions they replace"
        )

    def versions(frame: pl.DataFrame, version: pl.Expr, valid_from: datetime) -> pl.DataFrame:
        return frame.select(
            *spec.file_columns,
            pl.lit(valid_from, dtype=pl.Datetime("us")).alias("valid_from"),
            pl.lit(None, dtype=pl.Datetime("us")).alias("valid_to"),
            version.cast(pl.Int32).alias("version"),
            pl.lit(loaded_at, dtype=pl.Datetime("us")).alias("loaded_at"),
        )

    rows_to_insert = pl.concat(
        [
            versions(new, pl.lit(1), EPOCH),
            versions(changed, pl.col("version__current") + 1, effective_from),
        ]
    ).select(pl.col(c).cast(t) for c, t in spec.schema.items())
    keys_to_close = changed.select(key)
    return keys_to_close, rows_to_insert
