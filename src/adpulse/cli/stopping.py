"""Stopping a long-running command on SIGINT (Ctrl-C) or SIGTERM: between batches, never
inside one.

Python's default SIGINT handler raises ``KeyboardInterrupt`` wherever the main thread
happens to be: inside a Polars join, a DuckDB query (which then interrupts the
database's other work, a commit included) or a producer's write. Instead, the first
signal only sets a :class:`threading.Event`; every loop of a long-running command checks
it between batches, lets the batch in flight commit, stops its threads and prints one
line. A second signal stops the process at once (exit status 128 + the signal number):
nothing committed is lost, as after a crash, and what was in flight is processed again
by the next run.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType

#: The signals a long-running command stops on.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class StopRequest:
    """Set by the first stop signal (or by the command itself, e.g. at ``--duration``)."""

    event: threading.Event = field(default_factory=threading.Event)
    #: The signal that asked to stop (``"SIGINT"``, ``"SIGTERM"``), None if none did.
    signal_name: str | None = None

    def is_set(self) -> bool:
        return self.event.is_set()

    def stopped_line(self, done: str) -> str:
        """The one line a command prints when it ends: ``done`` says what it committed."""
        if self.signal_name is None:
            return done
        return f"stopped by {self.signal_name}: {done}"


@contextmanager
def stop_on_signals(request: StopRequest | None = None) -> Iterator[StopRequest]:
    """Within the block, SIGINT and SIGTERM set ``request.event`` instead of interrupting.

    A second signal ends the process at once with ``os._exit`` (exit status 128 + the
    signal number). The previous handlers come back when the block ends. Outside the
    main thread (where Python cannot install handlers) this only yields the request.
    """
    request = request if request is not None else StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        if request.event.is_set():
            # A handler may interrupt a print on the main thread: write to the descriptor.
            os.write(
                2,
                b"stopped at once: nothing committed is lost; what was in flight is "
                b"processed again by the next run\n",
            )
            os._exit(128 + signum)
        request.signal_name = signal.Signals(signum).name
        request.event.set()

    previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
