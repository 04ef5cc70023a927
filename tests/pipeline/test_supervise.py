"""The supervisor of ``process --workers N`` with stand-in child commands: a crashed
child is restarted, children stop when their stdin pipe closes, and a child failing on
its configuration (exit status 2) stops everything."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from adpulse.processor.workers import supervise


def _child(script: str) -> list[str]:
    return [sys.executable, "-c", script]


def test_a_crashed_worker_is_restarted(tmp_path: Path) -> None:
    runs, crashed = tmp_path / "runs", tmp_path / "crashed"
    # The very first run crashes (as if killed); every other run ends well.
    script = (
        "import os, sys, pathlib\n"
        f"pathlib.Path({str(runs)!r}).open('a').write('x')\n"
        "try:\n"
        f"    os.close(os.open({str(crashed)!r}, os.O_CREAT | os.O_EXCL))\n"
        "except FileExistsError:\n"
        "    sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    code = supervise(_child(script), 2, threading.Event(), until_caught_up=True, restart_delay=0.05)
    assert code == 0
    assert runs.read_text() == "xxx"  # 2 workers, one of them restarted once


def test_workers_stop_when_the_supervisor_closes_their_stdin(tmp_path: Path) -> None:
    stopped = tmp_path / "stopped"
    script = (
        "import sys, pathlib\n"
        "sys.stdin.buffer.read()\n"  # blocks until the supervisor closes the pipe
        f"pathlib.Path({str(stopped)!r}).open('a').write('x')\n"
    )
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    assert supervise(_child(script), 3, stop) == 0
    assert stopped.read_text() == "xxx"


def test_a_configuration_error_stops_every_worker(tmp_path: Path) -> None:
    script = "import sys\nsys.exit(2)\n"
    assert supervise(_child(script), 2, threading.Event(), restart_delay=0.05) == 2
