"""``adpulse reprocess``'s own checks, before any Spark starts (no PySpark needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from adpulse.cli.main import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "2023-09-09 00:00:30"], "whole minutes"),
        (["--to", "yesterday"], "--to: cannot read 'yesterday'"),
        (["--input-format", "csv"], "expected auto, log, jsonl or parquet"),
    ],
)
def test_bad_options_say_what_to_do(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["reprocess", *args, "--home", str(tmp_path / "home")])
    assert result.exit_code != 0
    assert message in str(result.exception) or message in result.output


def test_load_only_needs_the_parquet(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["reprocess", "--load-only", "--out", str(tmp_path / "none"), "--home", str(tmp_path)]
    )
    assert result.exit_code != 0
