"""The settings of a Lambda function: the project's :class:`~adpulse.config.Settings`
from its environment (``ADPULSE_*``), with the warehouse URL read from Secrets Manager
when ``warehouse_secret_arn`` names a secret.

The secret holds one of:

- the URL itself: ``postgresql://user:password@host:5432/db``;
- JSON with a ``url`` key (and optionally ``password``, used when the URL has none);
- an RDS-style JSON: ``host``, ``port``, ``username``, ``password``, ``dbname``
  (``engine`` may say ``postgres``), as RDS and Secrets Manager rotation write it.

The password becomes ``warehouse_password`` (a ``SecretStr``) rather than part of the
URL wherever the secret allows, and no value of the secret is ever logged.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

from pydantic import SecretStr

from adpulse.config import Settings, load_settings

_ARN = re.compile(r"^arn:aws[a-z-]*:secretsmanager:([a-z0-9-]+):[0-9]{12}:secret:.+$")


class SecretError(ValueError):
    """The warehouse secret is missing, unreadable or not in a known form."""


def function_settings(**overrides: Any) -> Settings:
    """The settings of this function: environment variables, then the warehouse secret."""
    settings = load_settings(**overrides)
    if not settings.warehouse_secret_arn:
        return settings
    url, password = read_warehouse_secret(settings.warehouse_secret_arn)
    update: dict[str, Any] = {"warehouse_url": url}
    if password is not None:
        update["warehouse_password"] = SecretStr(password)
    return settings.model_copy(update=update)


def read_warehouse_secret(arn: str, client: Any = None) -> tuple[str, str | None]:
    """The warehouse URL and password (``None`` when it is in the URL) kept in ``arn``.

    ``client``: a boto3 Secrets Manager client (default: one for the ARN's region; its
    endpoint follows ``AWS_ENDPOINT_URL_SECRETS_MANAGER`` like any boto3 client).
    """
    match = _ARN.match(arn)
    if match is None:
        raise SecretError(
            f"warehouse_secret_arn {arn!r} is not a Secrets Manager secret ARN"
            " (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME); set"
            " ADPULSE_WAREHOUSE_SECRET_ARN to the secret's ARN"
        )
    if client is None:
        import boto3

        client = boto3.client("secretsmanager", region_name=match[1])
    try:
        text = client.get_secret_value(SecretId=arn).get("SecretString")
    except Exception as exc:  # botocore ClientError: names the code, never the value
        raise SecretError(
            f"cannot read the warehouse secret {arn}: {type(exc).__name__}: {exc}. Check"
            " that it exists and that the function's role may secretsmanager:GetSecretValue"
            " it"
        ) from None
    if not text:
        raise SecretError(
            f"the warehouse secret {arn} has no SecretString (binary secrets are not read)"
        )
    return parse_warehouse_secret(text, arn)


def parse_warehouse_secret(text: str, arn: str = "the secret") -> tuple[str, str | None]:
    """(URL, password or ``None``) from a secret's text; see the module docs for the forms."""
    text = text.strip()
    if not text.startswith("{"):
        return text, None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise SecretError(f"{arn} starts like JSON but is not valid JSON") from None
    if not isinstance(value, dict):
        raise SecretError(f"{arn} must be a URL or a JSON object")
    password = value.get("password")
    password = str(password) if password is not None else None
    if isinstance(value.get("url"), str):
        return value["url"], password
    missing = [k for k in ("host", "username", "dbname") if not value.get(k)]
    if missing:
        raise SecretError(
            f"{arn} holds JSON without 'url' and without {', '.join(missing)}: store the"
            ' warehouse URL, {"url": ...}, or host, port, username, password and dbname'
        )
    engine = str(value.get("engine", "postgres"))
    if not engine.startswith("postgres"):
        raise SecretError(f"{arn} is for engine {engine!r}; the warehouse is PostgreSQL")
    port = int(value.get("port") or 5432)
    user = quote(str(value["username"]), safe="")
    dbname = quote(str(value["dbname"]), safe="")
    return f"postgresql://{user}@{value['host']}:{port}/{dbname}", password
