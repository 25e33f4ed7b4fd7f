"""Live allow and block lists of cards and terminals.

Rules read a list by name (``terminal_id in blocked_terminals``, ``card_id in
allowed_cards``); engines reload the lists within seconds of a change (``engines/base.py``:
``PolicyWatcher``). Each entry says who added it, why, and until when ("customer travelling
until Friday"); it is removed, never deleted. Supervisors change lists; every change is
audited.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import pandas as pd
import psycopg

from fraudstream.store import audit
from fraudstream.store.db import frame
from fraudstream.store.users import User

__all__ = ["ListError", "active_lists", "add_entry", "entries", "lists_digest", "remove_entry"]


class ListError(ValueError):
    """A list change that cannot be made; the message says why."""


def add_entry(
    conn: psycopg.Connection[Any],
    list_name: str,
    value: str,
    *,
    reason: str,
    by: User,
    at: datetime,
    expires_at: datetime | None = None,
) -> int:
    """Put ``value`` on ``list_name`` (an expired entry of it is replaced); returns its id."""
    if not by.can("supervisor"):
        raise ListError("a supervisor changes lists")
    if not reason.strip():
        raise ListError("say why: every list entry has a reason")
    if expires_at is not None and expires_at <= at:
        raise ListError(f"the entry would expire before it starts ({expires_at:%F %H:%M})")
    try:
        with conn.transaction():
            conn.execute(
                "UPDATE list_entries SET removed_by = 'expiry', removed_at = expires_at "
                "WHERE list_name = %s AND value = %s AND removed_at IS NULL AND expires_at <= %s",
                (list_name, value, at),
            )
            row = conn.execute(
                "INSERT INTO list_entries (list_name, value, reason, added_by, added_at, "
                "expires_at) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                (list_name, value, reason.strip(), by.username, at, expires_at),
            ).fetchone()
            assert row is not None
            audit.record(
                conn, at=at, actor=by.username, action="list.add", object_type="list",
                object_id=list_name,
                detail={"value": value, "reason": reason.strip(),
                        "expires_at": None if expires_at is None else expires_at.isoformat()},
            )  # fmt: skip
    except psycopg.errors.UniqueViolation:
        raise ListError(f"{value!r} is already on {list_name}") from None
    except psycopg.errors.CheckViolation as error:
        raise ListError(
            f"not a valid entry: {str(error).splitlines()[0]} (list names: lower-case letters, "
            "digits and '_'; values up to 128 characters; reasons up to 500)"
        ) from None
    return int(str(row[0]))


def remove_entry(conn: psycopg.Connection[Any], entry_id: int, *, by: User, at: datetime) -> None:
    if not by.can("supervisor"):
        raise ListError("a supervisor changes lists")
    with conn.transaction():
        row = conn.execute(
            "UPDATE list_entries SET removed_by = %s, removed_at = %s "
            "WHERE id = %s AND removed_at IS NULL RETURNING list_name, value",
            (by.username, at, entry_id),
        ).fetchone()
        if row is None:
            raise ListError(f"no list entry {entry_id} in force")
        audit.record(
            conn, at=at, actor=by.username, action="list.remove", object_type="list",
            object_id=str(row[0]), detail={"value": str(row[1]), "entry": entry_id},
        )  # fmt: skip


_IN_FORCE = "removed_at IS NULL AND (expires_at IS NULL OR expires_at > %(at)s)"


def active_lists(conn: psycopg.Connection[Any], at: datetime) -> dict[str, frozenset[str]]:
    """Every list's values in force at ``at``."""
    rows = conn.execute(
        f"SELECT list_name, array_agg(value) FROM list_entries WHERE {_IN_FORCE} "  # noqa: S608
        "GROUP BY list_name",
        {"at": at},
    ).fetchall()
    return {str(name): frozenset(str(v) for v in values) for name, values in rows}


def lists_digest(lists: dict[str, frozenset[str]]) -> str:
    """A short fingerprint of the lists' contents, recorded in each decision's rules_version
    so that the decision says which entries it saw."""
    text = "\n".join(f"{name}={','.join(sorted(values))}" for name, values in sorted(lists.items()))
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def entries(
    conn: psycopg.Connection[Any], at: datetime, *, include_past: bool = False
) -> pd.DataFrame:
    """The entries in force (or every entry), newest first."""
    where = "TRUE" if include_past else _IN_FORCE
    return frame(
        conn,
        "SELECT id, list_name, value, reason, added_by, added_at, expires_at, removed_by, "  # noqa: S608
        f"removed_at FROM list_entries WHERE {where} ORDER BY added_at DESC, id DESC",
        {"at": at},
    )
