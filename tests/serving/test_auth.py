"""API keys and access control: keys stored hashed on both warehouses, the auth matrix of
the HTTP API (no key, wrong key, wrong scope, revoked key, cookie), the loopback rule
and the refusal to serve off loopback without keys."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from builders import fresh_warehouse
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pgtest import PG_URL, new_schema, postgres_warehouse, require_postgres
from typer.testing import CliRunner

from adpulse.cli.main import app as cli
from adpulse.cli.runtime import UserError
from adpulse.config import Settings
from adpulse.serving import api, auth
from adpulse.serving.auth import (
    Access,
    InsecureServeError,
    KeyRing,
    WriteKey,
    access_for,
    create_key,
    list_keys,
    revoke_key,
)
from adpulse.storage.warehouse.base import Warehouse
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse
from adpulse.storage.warehouse.postgres import PostgresWarehouse


@pytest.fixture(params=["duckdb", "postgres", "redshift"])
def keystore(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Warehouse]:
    with fresh_warehouse(request.param, tmp_path / "w.duckdb") as wh:
        yield wh


# --- storage ---------------------------------------------------------------------------------
def test_keys_are_stored_hashed_never_the_secret(keystore: Warehouse) -> None:
    key, text = create_key(keystore, "read", "dashboard")
    assert text.startswith(f"ap_live_{key.key_id}_")
    secret = text.removeprefix(f"ap_live_{key.key_id}_")
    assert len(secret) == 43  # 32 random bytes, URL-safe base64 without padding
    rows = keystore.query("SELECT * FROM api_keys").to_dicts()
    assert len(rows) == 1
    (row,) = rows
    assert not any(secret in str(v) or text in str(v) for v in row.values())
    assert row["digest"] == hashlib.sha256(bytes.fromhex(row["salt"]) + secret.encode()).hexdigest()
    assert (row["key_id"], row["name"], row["scope"], row["revoked_at"]) == (
        key.key_id,
        "dashboard",
        "read",
        None,
    )
    # a second key with the same secret would not share the digest: salts differ
    other, _ = create_key(keystore, "read")
    assert other.salt != key.salt


def test_list_and_revoke(keystore: Warehouse) -> None:
    read, _ = create_key(keystore, "read", "r")
    write, _ = create_key(keystore, "write", "w")
    assert [(k.key_id, k.scope, k.name) for k in list_keys(keystore)] == [
        (read.key_id, "read", "r"),
        (write.key_id, "write", "w"),
    ]
    assert revoke_key(keystore, read.key_id) is True
    assert revoke_key(keystore, read.key_id) is False  # already revoked
    assert revoke_key(keystore, "nosuchkey0") is False
    listed = {k.key_id: k.revoked_at is not None for k in list_keys(keystore)}
    assert listed == {read.key_id: True, write.key_id: False}


def test_a_key_made_by_one_process_counts_in_another_over_postgres() -> None:
    """Over PostgreSQL the API and the collector run apart: each sees the other's keys
    (two warehouse objects: two connections, as two processes would have)."""
    require_postgres()
    schema = new_schema()
    with postgres_warehouse(schema) as writer, PostgresWarehouse(PG_URL, schema=schema) as reader:
        ring = KeyRing.of(reader, refresh_seconds=0)
        assert ring.reload() == 0
        key, _ = create_key(writer, "write")
        assert ring.reload() == 1
        revoke_key(writer, key.key_id)
        assert ring.reload() == 0


def test_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    real = auth.hmac.compare_digest

    def recording(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", recording)
    key = auth.ApiKey("abc", "", "read", "00" * 16, auth.key_digest("00" * 16, "s3cret"), None)  # type: ignore[arg-type]
    assert key.matches("s3cret") is True
    assert key.matches("s3creT") is False
    assert len(calls) == 2


# --- the HTTP matrix ---------------------------------------------------------------------------
@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[TestClient, Warehouse, dict[str, str]]]:
    """An API that requires keys (as off loopback), a write route as the collector's
    would be, and one key of each scope plus a revoked one."""
    with DuckDBWarehouse(tmp_path / "w.duckdb") as wh:
        wh.create_schema()
        keys = {scope: create_key(wh, scope)[1] for scope in ("read", "write")}
        revoked, keys["revoked"] = create_key(wh, "read")
        revoke_key(wh, revoked.key_id)
        ring = KeyRing.of(wh, refresh_seconds=0)
        access = access_for("auto", "0.0.0.0", ring)
        assert access.required
        app: FastAPI = api.create_app(wh, Settings(home=tmp_path), access=access)

        @app.post("/v1/events/test", status_code=202)
        async def collect(key: WriteKey) -> dict[str, str | None]:
            return {"key": None if key is None else key.scope}

        with TestClient(app) as client:
            yield client, wh, keys


def _bearer(text: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {text}"}


def test_auth_matrix(served: tuple[TestClient, Warehouse, dict[str, str]]) -> None:
    client, _, keys = served
    read, write = keys["read"], keys["write"]
    wrong = read[:-4] + ("AAAA" if not read.endswith("AAAA") else "BBBB")
    summary = "/api/v1/summary"
    cases = [
        ("GET", summary, {}, 401, "unauthorized"),
        ("GET", summary, _bearer(wrong), 401, "unauthorized"),
        ("GET", summary, _bearer("not a key"), 401, "unauthorized"),
        ("GET", summary, _bearer(keys["revoked"]), 401, "unauthorized"),
        ("GET", summary, _bearer(write), 403, "forbidden"),
        ("GET", summary, _bearer(read), 200, None),
        ("GET", summary, {"X-API-Key": read}, 200, None),
        ("GET", "/api/v1/stream?max_events=1", {}, 401, "unauthorized"),
        ("GET", "/api/v1/health", {"X-API-Key": write}, 403, "forbidden"),
        ("POST", "/v1/events/test", {}, 401, "unauthorized"),
        ("POST", "/v1/events/test", _bearer(read), 403, "forbidden"),
        ("POST", "/v1/events/test", _bearer(keys["revoked"]), 401, "unauthorized"),
        ("POST", "/v1/events/test", _bearer(write), 202, None),
        ("GET", "/metrics", {}, 401, "unauthorized"),
        ("GET", "/metrics", _bearer(write), 403, "forbidden"),
        ("GET", "/metrics", _bearer(read), 200, None),
        ("GET", "/healthz", {}, 200, None),
        ("GET", "/readyz", {}, 200, None),
        ("GET", "/", {}, 200, None),
    ]
    for method, path, headers, status, error in cases:
        response = client.request(method, path, headers=headers)
        assert (method, path, headers, response.status_code) == (method, path, headers, status)
        if error is not None:
            assert response.json()["error"] == error
        if status == 401:
            assert response.headers["www-authenticate"] == "Bearer"
    assert client.post("/v1/events/test", headers=_bearer(write)).json() == {"key": "write"}


def test_a_shared_answer_is_not_given_without_a_key(
    served: tuple[TestClient, Warehouse, dict[str, str]],
) -> None:
    """The shortcut that answers repeated requests before routing sits behind the gate."""
    client, _, keys = served
    path = "/api/v1/summary?platform=Web"
    assert client.get(path, headers=_bearer(keys["read"])).status_code == 200
    assert client.get(path).status_code == 401


def test_a_revoked_key_stops_working(served: tuple[TestClient, Warehouse, dict[str, str]]) -> None:
    client, wh, keys = served
    assert client.get("/api/v1/health", headers=_bearer(keys["read"])).status_code == 200
    (read,) = [k for k in list_keys(wh) if k.scope == "read" and k.revoked_at is None]
    revoke_key(wh, read.key_id)
    assert client.get("/api/v1/health", headers=_bearer(keys["read"])).status_code == 401


def test_the_dashboard_session_cookie(served: tuple[TestClient, Warehouse, dict[str, str]]) -> None:
    client, _, keys = served
    refused = client.post("/api/v1/session", json={"key": keys["write"]})
    assert (refused.status_code, refused.json()["error"]) == (403, "forbidden")
    assert client.post("/api/v1/session", json={"key": "nope"}).status_code == 401
    assert "set-cookie" not in refused.headers
    started = client.post("/api/v1/session", json={"key": keys["read"]})
    assert started.status_code == 200
    cookie = started.headers["set-cookie"]
    assert cookie.startswith(f"adpulse_key={keys['read']};")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/" in cookie
    assert client.get("/api/v1/summary").status_code == 200  # the client keeps the cookie
    assert client.delete("/api/v1/session").status_code == 200
    assert client.get("/api/v1/summary").status_code == 401


def test_an_open_server_needs_no_key(tmp_path: Path) -> None:
    with DuckDBWarehouse(tmp_path / "w.duckdb") as wh:
        wh.create_schema()
        create_key(wh, "read")
        access = access_for("auto", "127.0.0.1", KeyRing.of(wh, 0))
        with TestClient(api.create_app(wh, Settings(home=tmp_path), access=access)) as client:
            assert client.get("/api/v1/summary").status_code == 200
            assert client.post("/api/v1/session", json={"key": "anything"}).status_code == 200


# --- the decision at start ---------------------------------------------------------------------
class _Ring(KeyRing):
    def __init__(self, active: int) -> None:
        super().__init__(list, 5.0)
        self.active = active

    def reload(self) -> int:
        return self.active


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_needs_no_key_in_auto_mode(host: str) -> None:
    assert access_for("auto", host, _Ring(0)) == Access(required=False)
    assert access_for("auto", host, _Ring(2)) == Access(required=False)
    assert access_for("off", host, _Ring(2)) == Access(required=False)
    assert access_for("required", host, _Ring(0)).required  # starts; keys may come later


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.com"])
def test_off_loopback_refuses_without_keys_unless_insecure(host: str) -> None:
    for mode, active in (("auto", 0), ("required", 0), ("off", 3)):
        with pytest.raises(InsecureServeError, match=r"adpulse keys create --scope read"):
            access_for(mode, host, _Ring(active))  # type: ignore[arg-type]
    assert access_for("auto", host, _Ring(0), insecure=True) == Access(required=False)
    assert access_for("off", host, _Ring(0), insecure=True) == Access(required=False)
    assert access_for("auto", host, _Ring(1)).required
    assert access_for("required", host, _Ring(0), insecure=True).required


# --- the commands ----------------------------------------------------------------------------
def test_keys_commands_and_serve_refusal(tmp_path: Path) -> None:
    env = {"ADPULSE_HOME": str(tmp_path)}
    runner = CliRunner()
    with DuckDBWarehouse(tmp_path / "warehouse.duckdb") as wh:
        wh.create_schema()
    refused = runner.invoke(cli, ["serve", "--host", "0.0.0.0", "--port", "0"], env=env)
    assert isinstance(refused.exception, UserError)
    message = str(refused.exception)
    assert message.startswith("refusing to serve on 0.0.0.0 (not loopback): no API key exists")
    assert "--insecure" in message
    assert "\n" not in message

    created = runner.invoke(cli, ["keys", "create", "--scope", "write", "--name", "ads"], env=env)
    assert created.exit_code == 0, created.output
    text = created.stdout.strip().splitlines()[-1]
    assert text.startswith("ap_live_")
    listed = runner.invoke(cli, ["keys", "list", "--format", "json"], env=env)
    assert listed.exit_code == 0
    assert text not in listed.stdout
    key_id = text.removeprefix("ap_live_").split("_")[0]
    assert f'"id": "{key_id}"' in listed.stdout.replace('":"', '": "')
    assert runner.invoke(cli, ["keys", "revoke", key_id], env=env).exit_code == 0
    again = runner.invoke(cli, ["keys", "revoke", key_id], env=env)
    assert isinstance(again.exception, UserError)


# --- rate limits and CORS --------------------------------------------------------------------
def test_per_key_rate_limit(tmp_path: Path) -> None:
    with DuckDBWarehouse(tmp_path / "w.duckdb") as wh:
        wh.create_schema()
        _, first = create_key(wh, "read")
        _, second = create_key(wh, "read")
        settings = Settings(home=tmp_path, key_rate_limit=0.5)
        access = auth.access_of_server(wh, settings, "0.0.0.0", insecure=False)
        assert access.limiter is not None
        assert (access.limiter.rate, access.limiter.burst) == (0.5, 10)
        with TestClient(api.create_app(wh, settings, access=access)) as client:
            codes = [client.get("/api/v1/health", headers=_bearer(first)) for _ in range(11)]
            assert [r.status_code for r in codes] == [200] * 10 + [429]
            assert codes[-1].headers["retry-after"] == "2"
            assert codes[-1].json()["error"] == "too_many_requests"
            # per key: the other key still has its burst
            assert client.get("/api/v1/health", headers=_bearer(second)).status_code == 200


def test_no_rate_limit_by_default_or_when_open(tmp_path: Path) -> None:
    with DuckDBWarehouse(tmp_path / "w.duckdb") as wh:
        wh.create_schema()
        create_key(wh, "read")
        assert auth.access_of_server(wh, Settings(home=tmp_path), "0.0.0.0", False).limiter is None
        open_ = auth.access_of_server(wh, Settings(home=tmp_path, key_rate_limit=5), "::1", False)
        assert open_ == Access(required=False, hosts=frozenset())


def test_rate_limiter_refills_at_its_rate() -> None:
    now = [100.0]
    limiter = auth.RateLimiter(rate=2, burst=2, clock=lambda: now[0])
    assert [limiter.take("k"), limiter.take("k")] == [0.0, 0.0]
    assert limiter.take("k") == 0.5
    now[0] += 0.5
    assert limiter.take("k") == 0.0
    assert limiter.take("other") == 0.0


def test_cors_only_for_the_collector_and_listed_origins(tmp_path: Path) -> None:
    with DuckDBWarehouse(tmp_path / "w.duckdb") as wh:
        wh.create_schema()
        settings = Settings(home=tmp_path, cors_origins=["https://shop.example"])
        app = api.create_app(wh, settings)

        @app.post("/v1/events/test", status_code=202)
        async def collect() -> dict[str, str]:
            return {"ok": "yes"}

        preflight = {"Access-Control-Request-Method": "POST"}
        with TestClient(app) as client:
            allowed = client.options(
                "/v1/events/test", headers={"Origin": "https://shop.example", **preflight}
            )
            assert allowed.status_code == 200
            assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
            assert "X-API-Key" in allowed.headers["access-control-allow-headers"]
            assert "access-control-allow-credentials" not in allowed.headers
            other = client.options(
                "/v1/events/test", headers={"Origin": "https://evil.example", **preflight}
            )
            assert other.status_code == 400
            assert "access-control-allow-origin" not in other.headers
            sent = client.post("/v1/events/test", headers={"Origin": "https://shop.example"})
            assert sent.headers["access-control-allow-origin"] == "https://shop.example"
            read = client.get("/api/v1/health", headers={"Origin": "https://shop.example"})
            assert read.status_code == 200
            assert "access-control-allow-origin" not in read.headers


# --- Host headers (DNS rebinding) ------------------------------------------------------------
@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:8080", "127.0.0.1"),
        ("LocalHost:80", "localhost"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
        ("example.com", "example.com"),
        ("", ""),
    ],
)
def test_host_name(header: str, name: str) -> None:
    assert auth.host_name(header) == name


def test_a_loopback_server_answers_loopback_host_names_only(tmp_path: Path) -> None:
    with DuckDBWarehouse(tmp_path / "w.duckdb") as wh:
        wh.create_schema()
        settings = Settings(home=tmp_path, allowed_hosts=["Adpulse.Internal"])
        access = auth.access_of_server(wh, settings, "127.0.0.1", insecure=False)
        assert access == Access(required=False, hosts=frozenset({"adpulse.internal"}))
        with TestClient(api.create_app(wh, settings, access=access)) as client:
            for host in ("127.0.0.1:8080", "localhost:8080", "[::1]:8080", "adpulse.internal"):
                assert client.get("/api/v1/health", headers={"Host": host}).status_code == 200
            for host in ("evil.example", "evil.example:8080", "127.0.0.1.evil.example"):
                refused = client.get("/", headers={"Host": host})
                assert (refused.status_code, refused.json()["error"]) == (400, "invalid_host")
                assert "allowed_hosts" in refused.json()["detail"]
        # off loopback (keys protect it), any Host unless a list is given
        create_key(wh, "read")
        anywhere = auth.access_of_server(wh, Settings(home=tmp_path), "0.0.0.0", False)
        assert anywhere.hosts is None
        assert auth.access_of_server(wh, settings, "0.0.0.0", False).hosts == {"adpulse.internal"}


def _serve(home: Path, *options: str) -> tuple[subprocess.Popen[str], str]:
    """``adpulse serve`` on all addresses, port 0; returns the process and a loopback URL."""
    command = [sys.executable, "-m", "adpulse", "serve", "--host", "0.0.0.0", "--port", "0"]
    process = subprocess.Popen(
        [*command, *options],
        env={**os.environ, "ADPULSE_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    shown = ""
    while (found := re.search(r"http://0\.0\.0\.0:(\d+)/", shown)) is None:
        line = process.stdout.readline()  # the console may wrap the line
        if not line:
            pytest.fail(f"serve did not start: {shown}")
        shown += line
    return process, f"http://127.0.0.1:{found.group(1)}"


def test_serve_off_loopback_with_a_key_or_insecure(tmp_path: Path) -> None:
    with DuckDBWarehouse(tmp_path / "warehouse.duckdb") as wh:
        wh.create_schema()
    process, url = _serve(tmp_path, "--insecure")
    try:
        assert httpx.get(url + "/api/v1/summary").status_code == 200  # open, as asked
    finally:
        process.terminate()
        process.wait(10)
    with DuckDBWarehouse(tmp_path / "warehouse.duckdb") as wh:
        _, key = create_key(wh, "read")
    process, url = _serve(tmp_path)
    try:
        assert httpx.get(url + "/api/v1/summary").status_code == 401
        assert httpx.get(url + "/api/v1/summary", headers=_bearer(key)).status_code == 200
        assert httpx.get(url + "/healthz").status_code == 200
    finally:
        process.terminate()
        process.wait(10)


def test_the_last_keys_stay_in_use_while_the_warehouse_cannot_be_read() -> None:
    import asyncio

    now = [0.0]
    salt = "00" * 16
    stored = [auth.ApiKey("k1", "", "read", salt, auth.key_digest(salt, "s"), None)]  # type: ignore[arg-type]
    reads: list[str] = []

    def load() -> list[auth.ApiKey]:
        reads.append("read")
        if len(reads) > 1:
            raise ConnectionError("warehouse away")
        return stored

    ring = KeyRing(load, refresh_seconds=5, clock=lambda: now[0])

    async def scenario() -> list[bool]:
        found = [await ring.find("ap_live_k1_s") is not None]
        now[0] = 6.0  # stale: the re-read fails, the last keys still count
        found.append(await ring.find("ap_live_k1_s") is not None)
        now[0] = 7.0  # not retried on every request
        found.append(await ring.find("ap_live_k1_s") is not None)
        return found

    assert asyncio.run(scenario()) == [True, True, True]
    assert reads == ["read", "read"]
