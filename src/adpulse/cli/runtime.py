"""What the CLI needs of the composition root (:mod:`adpulse.runtime`), plus logging.

The wiring lives in :mod:`adpulse.runtime`; the CLI only parses arguments, calls it and
prints.
"""

from __future__ import annotations

import logging

from adpulse.runtime import (
    Runtime,
    UserError,
    Worker,
    open_log,
    open_runtime,
    open_store,
    partition_worker_for,
    processor_for,
    settings_for,
)

__all__ = [
    "Runtime",
    "UserError",
    "Worker",
    "configure_logging",
    "open_log",
    "open_runtime",
    "partition_worker_for",
    "processor_for",
    "settings_for",
    "open_store",
]


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
