"""The Lambda functions' settings: the warehouse secret in each of its forms, read from
the local Secrets Manager, and errors that say what to do without showing the secret."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from awstest import REGION, unique_name, use_local_aws

from adpulse.aws.settings import (
    SecretError,
    function_settings,
    parse_warehouse_secret,
    read_warehouse_secret,
)


def test_secret_forms() -> None:
    url = "postgresql://adpulse:s3cret@db.internal:5432/adpulse"
    assert parse_warehouse_secret(url) == (url, None)
    assert parse_warehouse_secret(json.dumps({"url": url})) == (url, None)
    assert parse_warehouse_secret(
        json.dumps({"url": "postgresql://adpulse@db/adpulse", "password": "pw"})
    ) == ("postgresql://adpulse@db/adpulse", "pw")
    rds = {
        "engine": "postgres",
        "host": "db.cluster-x.eu-central-1.rds.amazonaws.com",
        "port": 5433,
        "username": "ad pulse",
        "password": "p@ss:word/",
        "dbname": "adpulse",
    }
    assert parse_warehouse_secret(json.dumps(rds)) == (
        "postgresql://ad%20pulse@db.cluster-x.eu-central-1.rds.amazonaws.com:5433/adpulse",
        "p@ss:word/",
    )


def test_malformed_secrets_say_what_to_store() -> None:
    with pytest.raises(SecretError, match="without 'url' and without host"):
        parse_warehouse_secret(json.dumps({"username": "u", "password": "hidden-pw"}))
    with pytest.raises(SecretError, match="engine 'mysql'"):
        parse_warehouse_secret(
            json.dumps({"engine": "mysql", "host": "h", "username": "u", "dbname": "d"})
        )
    with pytest.raises(SecretError, match="not valid JSON"):
        parse_warehouse_secret('{"url": ')
    with pytest.raises(SecretError, match="not a Secrets Manager secret ARN"):
        read_warehouse_secret("my-secret")


def test_settings_take_the_url_and_password_from_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = use_local_aws(monkeypatch)
    client = boto3.client("secretsmanager", region_name=REGION, endpoint_url=endpoint)
    secret = {"url": "postgresql://adpulse@db.internal/adpulse", "password": "hidden-pw"}
    arn = client.create_secret(Name=unique_name("wh"), SecretString=json.dumps(secret))["ARN"]
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", endpoint)
    monkeypatch.setenv("ADPULSE_HOME", str(tmp_path))
    monkeypatch.setenv("ADPULSE_WAREHOUSE_SECRET_ARN", arn)
    settings = function_settings()
    assert settings.warehouse_url == "postgresql://adpulse@db.internal/adpulse"
    assert settings.warehouse_password is not None
    assert settings.warehouse_password.get_secret_value() == "hidden-pw"
    assert "hidden-pw" not in json.dumps(settings.masked())

    missing = arn.rsplit(":", 1)[0] + ":missing-AbCdEf"
    monkeypatch.setenv("ADPULSE_WAREHOUSE_SECRET_ARN", missing)
    with pytest.raises(SecretError, match="secretsmanager:GetSecretValue") as caught:
        function_settings()
    assert "hidden-pw" not in str(caught.value)


def test_without_a_secret_the_environment_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADPULSE_HOME", str(tmp_path))
    monkeypatch.delenv("ADPULSE_WAREHOUSE_SECRET_ARN", raising=False)
    monkeypatch.setenv("ADPULSE_WAREHOUSE_URL", f"duckdb:///{tmp_path}/w.duckdb")
    assert function_settings().warehouse_url == f"duckdb:///{tmp_path}/w.duckdb"
