"""A local AWS API for tests: ``moto[server]`` on a free port, no network, no credentials.

``aws_endpoint()`` starts one ThreadedMotoServer per test process (pytest-xdist worker)
and returns its endpoint URL; tests keep apart by resource name (a fresh stream, table or
topic name each, from :func:`unique_name`). :func:`use_local_aws` sets the dummy credentials
and region boto3 needs. Kinesis, DynamoDB, SNS, SQS and S3 are served by the same server.
"""

from __future__ import annotations

import atexit
import socket
import subprocess
import sys
import time
import uuid
from functools import cache

import pytest
from moto.server import ThreadedMotoServer

REGION = "eu-central-1"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@cache
def aws_endpoint() -> str:
    """The endpoint URL of this process's local AWS API server (started on first use)."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    atexit.register(server.stop)
    return f"http://127.0.0.1:{port}"


@cache
def aws_endpoint_own_process() -> str:
    """The endpoint URL of a local AWS API server in a process of its own (started on
    first use, one per test process). For tests that keep their own process busy (the
    DynamoDB live views): an in-process server would wait for their GIL at every request.
    Tests that patch the server (``kinesistest.realistic_resharding``) need the in-process
    one, :func:`aws_endpoint`."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", "from moto.server import main; main()", "-H", "127.0.0.1"]
        + ["-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    atexit.register(server.kill)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the local AWS API server did not start on port {port}"
                ) from None
            time.sleep(0.1)
    return f"http://127.0.0.1:{port}"


def unique_name(prefix: str) -> str:
    """A resource name no other test uses: ``prefix-<8 hex digits>``."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def use_local_aws(monkeypatch: pytest.MonkeyPatch, own_process: bool = False) -> str:
    """Dummy credentials and region in the environment; the local server's endpoint URL.

    Call it from a fixture of the test module::

        @pytest.fixture
        def aws(monkeypatch: pytest.MonkeyPatch) -> str:
            return use_local_aws(monkeypatch)
    """
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return aws_endpoint_own_process() if own_process else aws_endpoint()
