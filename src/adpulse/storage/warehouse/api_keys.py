"""The ``api_keys`` table: API keys as the HTTP server checks them (see
:mod:`adpulse.serving.auth`), stored hashed.

In the warehouse rather than a file in the home directory: over PostgreSQL the API, the
collector and the workers may run as separate processes on separate hosts (or
containers) that share nothing but the database, and every one of them must see a key
created, or revoked, anywhere. The secret part of a key is never stored: only a random
salt and the SHA-256 of salt + secret.
"""

from __future__ import annotations

from typing import Final

import polars as pl

API_KEYS_TABLE: Final = "api_keys"
API_KEYS: Final = {
    "key_id": pl.String(),
    "name": pl.String(),
    "scope": pl.String(),
    "salt": pl.String(),
    "digest": pl.String(),
    "created_at": pl.Datetime("us"),
    "revoked_at": pl.Datetime("us"),
}
API_KEYS_KEY: Final = ("key_id",)

#: Every key, oldest first (the secret is not there to select).
SELECT_KEYS: Final = (
    "SELECT key_id, name, scope, salt, digest, created_at, revoked_at"
    " FROM api_keys ORDER BY created_at, key_id"
)
INSERT_KEY: Final = (
    "INSERT INTO api_keys (key_id, name, scope, salt, digest, created_at, revoked_at)"
    " VALUES (?, ?, ?, ?, ?, ?, NULL)"
)
REVOKE_KEY: Final = "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL"
COUNT_REVOKED: Final = "SELECT COUNT(*) AS n FROM api_keys WHERE key_id = ? AND revoked_at = ?"
#: Whether the table exists (a read-only warehouse made by an earlier version lacks it).
TABLE_EXISTS: Final = (
    "SELECT COUNT(*) AS n FROM information_schema.tables"
    " WHERE table_schema = current_schema() AND table_name = 'api_keys'"
)
