"""Reading dimension CSV files: the original's samples verbatim, and clear errors."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl
import pytest

from adpulse.storage.dimensions import (
    DIMENSIONS,
    DimensionFileError,
    parse_dimension_csv,
    read_dimension_csv,
)

# The original's sample files, byte for byte (a space after each comma).
CAMPAIGNS_SAMPLE = (
    "ad_id, campaign, product, target_start_date, target_end_date\n"
    "1001, Back-to-School, Laptop, 2023-08-01, 2023-10-31\n"
    "1002, Summer Sale, Smartphone, 2023-07-15, 2023-09-15\n"
    "1003, Fall Fashion, Jacket, 2023-09-01, 2023-11-30\n"
)
USERS_SAMPLE = (
    "user_id, age, gender, interests\n"
    "U1234, 22, Male, Music;Travel\n"
    "U5678, 30, Female, Reading;Photography\n"
    "U9101, 27, Male, Gaming;Cooking\n"
)


def write(tmp_path: Path, text: str | bytes, name: str = "dim.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


def test_campaigns_sample_verbatim(tmp_path: Path) -> None:
    kind, frame = read_dimension_csv(write(tmp_path, CAMPAIGNS_SAMPLE))
    assert kind == "campaigns"
    assert frame.schema == pl.Schema(DIMENSIONS["campaigns"].file_schema)
    assert frame.rows() == [
        (1001, "Back-to-School", "Laptop", date(2023, 8, 1), date(2023, 10, 31)),
        (1002, "Summer Sale", "Smartphone", date(2023, 7, 15), date(2023, 9, 15)),
        (1003, "Fall Fashion", "Jacket", date(2023, 9, 1), date(2023, 11, 30)),
    ]


def test_users_sample_verbatim(tmp_path: Path) -> None:
    kind, frame = read_dimension_csv(write(tmp_path, USERS_SAMPLE))
    assert kind == "users"
    assert frame.schema == pl.Schema(
        {"user_id": pl.String(), "age": pl.Int32(), "gender": pl.String(), "interests": pl.String()}
    )
    assert frame.rows() == [
        ("U1234", 22, "Male", "Music;Travel"),
        ("U5678", 30, "Female", "Reading;Photography"),
        ("U9101", 27, "Male", "Gaming;Cooking"),
    ]


def test_shared_sample_files_when_present(samples: Path) -> None:
    if not (samples / "campaigns.csv").exists():
        pytest.skip("shared/samples not laid beside this checkout")
    assert read_dimension_csv(samples / "campaigns.csv")[1].height == 3
    assert read_dimension_csv(samples / "users.csv")[1].height == 3


def test_tolerated_variations(tmp_path: Path) -> None:
    text = (
        "\ufeffInterests,USER_ID ,gender,age\r\n"  # BOM, case, order, CRLF
        '" Music ; Travel ;",U1,Male,22\r\n'
        "\r\n"  # blank lines are not rows
        ",U2,,\r\n"  # empty optional fields are NULL
        '"Cooking","U3, Jr",Female,40\r\n'  # a quoted comma
        "\r\n"
    )
    kind, frame = read_dimension_csv(write(tmp_path, text))
    assert kind == "users"
    assert frame.columns == ["user_id", "age", "gender", "interests"]
    assert frame.rows() == [
        ("U1", 22, "Male", "Music;Travel"),
        ("U2", None, None, None),
        ("U3, Jr", 40, "Female", "Cooking"),
    ]


def test_header_only_is_an_empty_load(tmp_path: Path) -> None:
    kind, frame = read_dimension_csv(
        write(tmp_path, "ad_id, campaign, product, target_start_date, target_end_date\n")
    )
    assert kind == "campaigns"
    assert frame.is_empty()
    assert frame.schema == pl.Schema(DIMENSIONS["campaigns"].file_schema)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            CAMPAIGNS_SAMPLE + "10x4, Winter, Coat, 2023-12-01, 2024-01-31\n",
            r":5: column 'ad_id': not an integer \(got '10x4'\)",
        ),
        (
            CAMPAIGNS_SAMPLE + "1004, Winter, Coat, 12/01/2023, 2024-01-31\n",
            r":5: column 'target_start_date': not an ISO date \(YYYY-MM-DD\) \(got '12/01/2023'\)",
        ),
        (
            CAMPAIGNS_SAMPLE + "1004, Winter, Coat, 2023-02-30, 2024-01-31\n",
            r":5: column 'target_start_date': not a valid calendar date",
        ),
        (
            CAMPAIGNS_SAMPLE + "99999999999999999999, Winter, Coat, , \n",
            r":5: column 'ad_id': integer out of range",
        ),
        (
            CAMPAIGNS_SAMPLE.replace("1002, Summer Sale, Smartphone, ", "1002, Summer Sale, "),
            r":3: expected 5 fields \(ad_id, campaign, product, target_start_date,"
            r" target_end_date\), found 4",
        ),
        (
            CAMPAIGNS_SAMPLE + "1001, Again, Laptop, 2023-08-01, 2023-10-31\n",
            r":5: column 'ad_id': duplicate key 1001 \(first on line 2\)",
        ),
        (CAMPAIGNS_SAMPLE + ", Nameless, Laptop, , \n", r":5: column 'ad_id': key is empty"),
        (USERS_SAMPLE + "U1, twenty, Male, Music\n", r":5: column 'age': not an integer"),
        (
            USERS_SAMPLE + "U1, 200, Male, Music\n",
            r":5: column 'age': age must be between 0 and 150",
        ),
        (
            "user_id, age, sex, interests\nU1, 2, M, x\n",
            r":1: header \(user_id, age, sex, interests\) is not campaigns \(ad_id, campaign,"
            r" product, target_start_date, target_end_date\) or users \(user_id, age, gender,"
            r" interests\)",
        ),
        ("user_id, age, gender, interests, extra\n", r":1: header .* is not campaigns"),
        ("", r": empty file; expected a header row"),
        ("\n\n", r": empty file; expected a header row"),
        ('user_id, age, gender, interests\n"U1, 2, M, x\n', r":\d+: unexpected end of data"),
    ],
)
def test_bad_files_name_file_line_and_column(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text, "bad.csv")
    with pytest.raises(DimensionFileError, match=str(path).replace(".", r"\.") + message):
        read_dimension_csv(path)


def test_size_limit(tmp_path: Path) -> None:
    path = write(tmp_path, CAMPAIGNS_SAMPLE)
    assert read_dimension_csv(path, max_bytes=len(CAMPAIGNS_SAMPLE))[1].height == 3
    with pytest.raises(DimensionFileError, match=r"more than the 100-byte limit"):
        read_dimension_csv(path, max_bytes=100)


def test_not_utf8_and_missing_files(tmp_path: Path) -> None:
    path = write(
        tmp_path, "user_id, age, gender, interests\nU1, 2, M\xe4nnlich, x\n".encode("latin-1")
    )
    with pytest.raises(
        DimensionFileError, match=r"dim\.csv:2: not UTF-8 text \(bad byte at offset 40\)"
    ):
        read_dimension_csv(path)
    with pytest.raises(DimensionFileError, match=r"nope\.csv: cannot read dimension file"):
        read_dimension_csv(tmp_path / "nope.csv")


def test_parse_text_names_its_source() -> None:
    with pytest.raises(DimensionFileError, match=r"^upload:2: column 'age'"):
        parse_dimension_csv("user_id, age, gender, interests\nU1, x, M, y\n", source="upload")
