"""The URL registry: every URL setting opens and refuses the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from adpulse.backends import SERVING, TRANSPORT, URL_SETTINGS, WAREHOUSE, UnsupportedUrlError
from adpulse.config import Settings
from adpulse.serving.store import MemoryServingStore, open_serving_store
from adpulse.storage.warehouse import open_warehouse
from adpulse.transport import InMemoryTransport, open_transport


def test_each_scheme_names_its_opener() -> None:
    assert TRANSPORT.backend("").opener == "adpulse.transport:open_embedded"
    assert TRANSPORT.backend("redis://h:1/0").opener == "adpulse.transport:open_redis"
    assert WAREHOUSE.backend("").opener == "adpulse.storage.warehouse:open_duckdb"
    assert WAREHOUSE.backend("postgres://h/db").opener == "adpulse.storage.warehouse:open_postgres"
    assert SERVING.backend("memory://").opener == "adpulse.serving.store:open_memory_store"
    assert sorted(URL_SETTINGS) == ["serving_url", "transport_url", "warehouse_url"]


def test_every_opener_can_be_imported() -> None:
    for setting in URL_SETTINGS.values():
        for backend in setting.backends:
            assert callable(backend.load()), backend


@pytest.mark.parametrize(
    ("setting", "url", "why"),
    [
        ("transport_url", "kafka://clicks", "no backend for the scheme 'kafka'"),
        ("transport_url", "kinesis://a b?region=x", "the part after kinesis:// does not fit"),
        ("transport_url", "/some/dir", "it is not a URL (SCHEME://...)"),
        ("warehouse_url", "duckdb://x", "the part after duckdb:// does not fit"),
        ("warehouse_url", "mysql://bob:hunter2@db/x", "no backend for the scheme 'mysql'"),
        ("serving_url", "memory://x", "the part after memory:// does not fit"),
        ("serving_url", "dynamo://table", "no backend for the scheme 'dynamo'"),
        ("serving_url", "dynamodb://a/b", "the part after dynamodb:// does not fit"),
    ],
)
def test_one_error_names_the_setting_the_value_and_the_accepted_forms(
    setting: str, url: str, why: str
) -> None:
    with pytest.raises(UnsupportedUrlError) as info:
        URL_SETTINGS[setting].backend(url)
    shown = url.replace("hunter2", "***")
    env = f"ADPULSE_{setting.upper()}"
    accepted = URL_SETTINGS[setting].accepted
    assert str(info.value) == (
        f"unsupported {setting} {shown!r}: {why} (setting {setting}, env {env});"
        f" accepted: {accepted}"
    )
    assert "hunter2" not in str(info.value)


def test_the_accepted_forms_list_every_backend() -> None:
    assert SERVING.accepted == (
        "'' (the default: memory://), 'memory://', 'redis://HOST:PORT/DB[?prefix=NAME]',"
        " 'dynamodb://TABLE[?region=REGION&endpoint_url=URL]'"
    )


def test_the_openers_refuse_through_the_registry(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedUrlError, match="unsupported transport_url 'kafka://x'"):
        open_transport(Settings(home=tmp_path, transport_url="kafka://x"))
    with pytest.raises(UnsupportedUrlError, match="unsupported warehouse_url 'sqlite:///x'"):
        open_warehouse(Settings(home=tmp_path, warehouse_url="sqlite:///x"))
    with pytest.raises(UnsupportedUrlError, match="unsupported serving_url 'memory://x'"):
        open_serving_store(Settings(home=tmp_path, serving_url="memory://x"))
    assert isinstance(
        open_transport(Settings(home=tmp_path, transport_url="memory://")), InMemoryTransport
    )
    assert isinstance(open_serving_store(Settings(home=tmp_path)), MemoryServingStore)
