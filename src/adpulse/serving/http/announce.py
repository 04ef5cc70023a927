"""Where a running server answers, for commands that cannot open its warehouse.

A DuckDB file is held by one process: while ``adpulse demo`` or ``adpulse serve`` holds
it, ``adpulse query`` and ``adpulse status`` ask that process's HTTP API instead. So a
server writes :func:`server_file` (its pid and URL, as JSON) next to the warehouse file
once it listens, and removes it when it stops; a file left behind by a killed process
names a pid that is gone, and :func:`running_server` ignores it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adpulse.config import Settings

log = logging.getLogger(__name__)

#: Appended to the warehouse file's name.
SUFFIX = ".server.json"


@dataclass(frozen=True, slots=True)
class RunningServer:
    """A live adpulse process serving the HTTP API over a warehouse."""

    pid: int
    url: str
    file: Path


def server_file(settings: Settings) -> Path:
    """The file a server announces itself in: ``<warehouse file>.server.json``."""
    warehouse = settings.warehouse_path
    return warehouse.with_name(warehouse.name + SUFFIX)


def local_url(sock: Any) -> str:
    """The URL a process on this machine reaches ``sock`` at (a wildcard address is
    reached on loopback), ending in ``/``."""
    host, port = sock.getsockname()[:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


class Announcement:
    """The server file of this process, written on construction, removed by
    :meth:`close` (only if it is still this process's)."""

    def __init__(self, settings: Settings, sock: Any) -> None:
        self.path = server_file(settings)
        self.url = local_url(sock)
        body = {"pid": os.getpid(), "url": self.url, "started": datetime.now(UTC).isoformat()}
        temporary = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        try:
            temporary.write_text(json.dumps(body) + "\n")
            temporary.replace(self.path)  # whole or absent, never half written
        except OSError as exc:  # serving matters more than the convenience
            log.warning(
                "cannot write %s (%s): other commands will not find this server", self.path, exc
            )
            self.written = False
        else:
            self.written = True

    def close(self) -> None:
        if not self.written:
            return
        found = _read(self.path)
        if found is not None and found.pid == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> Announcement:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def running_server(settings: Settings) -> RunningServer | None:
    """The server announced next to ``settings``' warehouse, if its process is alive."""
    found = _read(server_file(settings))
    if found is None or not _alive(found.pid):
        return None
    return found


def _read(path: Path) -> RunningServer | None:
    try:
        body = json.loads(path.read_text())
        return RunningServer(int(body["pid"]), str(body["url"]), path)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
