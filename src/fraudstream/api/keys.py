"""API keys: created and revoked with ``fraudstream api-keys``, stored as their SHA-256.

A key is ``fsk_`` and 43 characters of a 256-bit random token: shown once, at creation. Its
SHA-256 is what the database keeps; a fast hash is safe for a random 256-bit secret (there
is no dictionary to try) and keeps each request's check to a dictionary lookup. The API
holds the active keys' digests in memory and reloads them every few seconds, so a revoked
key stops working within ``RELOAD_EVERY_S``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from fraudstream.api.reloading import Reloader
from fraudstream.store.db import HeldConnection

__all__ = [
    "KEY_PREFIX",
    "RELOAD_EVERY_S",
    "ApiKey",
    "ApiKeyError",
    "KeyRing",
    "create_key",
    "list_keys",
    "revoke_key",
]


KEY_PREFIX = "fsk_"
RELOAD_EVERY_S = 5.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class ApiKeyError(ValueError):
    """A key operation was refused; the message says why."""


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def create_key(conn: psycopg.Connection[Any], name: str) -> tuple[ApiKey, str]:
    """A new key named ``name``: its record and the key itself (shown once, never stored)."""
    if not _NAME.match(name):
        raise ApiKeyError(
            f"key name {name!r} must be 1-63 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    token = KEY_PREFIX + secrets.token_urlsafe(32)
    prefix = token[: len(KEY_PREFIX) + 6]
    try:
        row = conn.execute(
            "INSERT INTO api_keys (name, prefix, key_sha256) VALUES (%s, %s, %s) "
            "RETURNING id, name, prefix, created_at, revoked_at",
            (name, prefix, _digest(token)),
        ).fetchone()
    except psycopg.errors.UniqueViolation:
        conn.rollback()
        raise ApiKeyError(
            f"a key named {name!r} exists already, perhaps revoked: names are never reused "
            "(`fraudstream api-keys list` shows them), pick another"
        ) from None
    conn.commit()
    assert row is not None
    return ApiKey(*row), token


def list_keys(conn: psycopg.Connection[Any]) -> list[ApiKey]:
    rows = conn.execute(
        "SELECT id, name, prefix, created_at, revoked_at FROM api_keys ORDER BY id"
    ).fetchall()
    return [ApiKey(*row) for row in rows]


def revoke_key(conn: psycopg.Connection[Any], name: str) -> ApiKey:
    """Revoke the key named ``name`` (kept, marked revoked)."""
    row = conn.execute(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE name = %s "
        "RETURNING id, name, prefix, created_at, revoked_at",
        (name,),
    ).fetchone()
    conn.commit()
    if row is None:
        raise ApiKeyError(f"no key named {name!r} (`fraudstream api-keys list` shows them)")
    return ApiKey(*row)


class KeyRing:
    """The active keys' digests, reloaded from PostgreSQL every ``RELOAD_EVERY_S`` by a
    thread of its own: checking a key never waits for the database (a reload that fails
    keeps the last set)."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self._connection = HeldConnection(connect)
        self._active: dict[bytes, str] = {}
        self._reloader = Reloader("API keys", self.reload, RELOAD_EVERY_S)

    def reload(self) -> None:
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT key_sha256, name FROM api_keys WHERE revoked_at IS NULL"
            ).fetchall()
        self._active = {bytes(digest): name for digest, name in rows}

    def start(self) -> None:
        self._reloader.start()

    def close(self) -> None:
        self._reloader.close()
        self._connection.close()

    def name_of(self, token: str | None) -> str | None:
        """The name of the active key ``token``, or None."""
        if not token or not token.startswith(KEY_PREFIX):
            return None
        # Looked up by digest: a guess's timing says nothing about the digests held.
        return self._active.get(_digest(token))
