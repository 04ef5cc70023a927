"""The ``adpulse`` entry point: nothing heavy is imported before a signal can be handled.

Importing the command line (Polars, NumPy, DuckDB, typer) takes a second or more. A
SIGINT or SIGTERM in that time, or during a short command, ends the command with one
line ("interrupted") and exit status 130, never a traceback; a long-running command
installs its own handlers (:mod:`adpulse.cli.stopping`) and stops cleanly instead.
"""

from __future__ import annotations

import signal
import sys


def main() -> None:
    # SIGTERM as Ctrl-C: a KeyboardInterrupt, which the command line turns into one line.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # Before any thread starts (ctypes only: nothing heavy yet).
    from adpulse.processor.allocator import limit_arenas

    limit_arenas()
    try:
        from adpulse.cli.main import main as run_command_line
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    run_command_line()
