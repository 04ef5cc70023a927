"""Sources: where events come from before the transport.

- :mod:`~adpulse.sources.generator`: a realistic, deterministic event generator (the
  original's mock producers), bounded data sets or a live feed, with injected faults;
- :mod:`~adpulse.sources.files`: data sets on disk in the original's formats;
- :mod:`~adpulse.sources.producer`: publishing payloads to a transport, partitioned by
  user id, and replaying a data set directory.
"""

from adpulse.sources.files import iter_stream_files, read_lines, write_csv, write_dataset
from adpulse.sources.generator import (
    EXPECTED_REASON,
    EventGenerator,
    GeneratedEvents,
    GeneratorConfig,
    MalformedKind,
    StreamCounts,
    malformed_kinds,
)
from adpulse.sources.producer import publish, replay_directory, user_ids

__all__ = [
    "EXPECTED_REASON",
    "EventGenerator",
    "GeneratedEvents",
    "GeneratorConfig",
    "MalformedKind",
    "StreamCounts",
    "iter_stream_files",
    "malformed_kinds",
    "publish",
    "read_lines",
    "replay_directory",
    "user_ids",
    "write_csv",
    "write_dataset",
]
