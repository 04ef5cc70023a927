"""``--from``/``--to`` out of any sane range (issue 8, item 2): one clear line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("option", "value"),
    [("--from", "0001-01-01T00:00:00+05:00"), ("--to", "9999-12-31T23:59:59-05:00")],
)
def test_cli_time_options_out_of_range_are_a_clear_error(
    tmp_path: Path, option: str, value: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "adpulse", "query", "ctr", option, value],
        capture_output=True,
        text=True,
        timeout=120,
        env={"ADPULSE_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2, result.stderr
    assert " ".join(result.stderr.split()) == (  # one line, wrapped to the terminal
        f"error: {option}: {value!r} is outside the supported range 1000-01-01 to 9000-01-01 (UTC)"
    )
    assert result.stdout == ""
