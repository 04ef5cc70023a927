"""open_warehouse: choosing the backend from settings.warehouse_url."""

from __future__ import annotations

from pathlib import Path

import pytest

from adpulse.config import Settings
from adpulse.storage.warehouse import open_warehouse
from adpulse.storage.warehouse.base import WarehouseUnavailableError
from adpulse.storage.warehouse.duckdb import DuckDBWarehouse


def settings(home: Path, warehouse_url: str = "") -> Settings:
    return Settings.model_validate({"home": home, "warehouse_url": warehouse_url})


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ADPULSE_HOME", str(tmp_path))
    monkeypatch.setenv("ADPULSE_CONFIG", str(tmp_path / "none.toml"))
    return tmp_path


def test_default_is_duckdb_in_home_with_tables(home: Path) -> None:
    wh = open_warehouse(settings(home))
    try:
        assert isinstance(wh, DuckDBWarehouse)
        assert wh.dialect == "duckdb"
        assert wh.path == home / "warehouse.duckdb"
        assert wh.next_batch_id() == 1  # tables exist
    finally:
        wh.close()
    ro = open_warehouse(settings(home), read_only=True)
    try:
        assert isinstance(ro, DuckDBWarehouse) and ro.read_only
    finally:
        ro.close()


def test_duckdb_url_names_the_file(home: Path) -> None:
    target = home / "elsewhere" / "wh.duckdb"
    wh = open_warehouse(settings(home, f"duckdb://{target}"))
    try:
        assert isinstance(wh, DuckDBWarehouse)
        assert wh.path == target
        assert target.exists()
    finally:
        wh.close()


@pytest.mark.parametrize(
    "url",
    [
        "duckdb://",
        "mysql://bob:hunter2@db/x",
        "duckdb:///",
        "sqlite:///x.db",
        "warehouse.duckdb",
    ],
)
def test_other_urls_are_refused_clearly(home: Path, url: str) -> None:
    with pytest.raises(
        ValueError, match=r"unsupported warehouse_url .*ADPULSE_WAREHOUSE_URL.*duckdb:///PATH"
    ):
        open_warehouse(settings(home, url))


def test_refusal_masks_a_password(home: Path) -> None:
    with pytest.raises(ValueError, match="postgresql://") as info:
        open_warehouse(settings(home, "mysql://bob:hunter2@db/x"))
    assert "hunter2" not in str(info.value) and "bob:***@db" in str(info.value)


def test_unreachable_postgres_names_the_setting(home: Path) -> None:
    values = {
        "home": home,
        "warehouse_url": "postgresql://bob@127.0.0.1:1/x",
        "warehouse_password": "hunter2",
    }
    with pytest.raises(WarehouseUnavailableError, match="setting warehouse_url") as info:
        open_warehouse(Settings.model_validate(values))
    assert "hunter2" not in str(info.value)


def test_config_masks_secrets_and_url_passwords(home: Path) -> None:
    shown = Settings.model_validate(
        {
            "home": home,
            "warehouse_url": "postgresql://bob:hunter2@db:5432/x?sslmode=require",
            "warehouse_password": "s3cret",
            "transport_url": "redis://:pw@localhost:6379/0",
        }
    ).masked()
    assert shown["warehouse_password"] == "***"
    assert shown["warehouse_url"] == "postgresql://bob:***@db:5432/x?sslmode=require"
    assert shown["transport_url"] == "redis://:***@localhost:6379/0"
    assert "hunter2" not in str(shown) and "s3cret" not in str(shown)
    assert Settings.model_validate({"home": home}).masked()["warehouse_password"] is None
