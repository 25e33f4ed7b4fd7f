"""The append-only audit log: who did what to which object, when, with what detail.

Every action of a person is written here in the same transaction as the action itself (a
verdict, a case change, a rule or list change, a model promotion, a user change), so the log
cannot miss an action that happened nor show one that did not. The table refuses UPDATE,
DELETE and TRUNCATE for every role (migration 0009).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pandas as pd
import psycopg
from psycopg.types.json import Jsonb

from fraudstream.store.db import frame

__all__ = ["ACTIONS", "audit_entries", "record"]

ACTIONS = (
    "verdict",
    "case.assign", "case.status", "case.note", "case.resolve",
    "rules.draft", "rules.approve", "rules.publish", "rules.rollback", "rules.shadow",
    "list.add", "list.remove",
    "model.challenge", "model.promote", "model.rollback",
    "user.create", "user.role", "user.password", "user.disable", "user.login",
)  # fmt: skip
"""What can be audited (the Audit page filters on these)."""


def record(
    conn: psycopg.Connection[Any],
    *,
    at: datetime,
    actor: str,
    action: str,
    object_type: str,
    object_id: str,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """One audit line, in the caller's transaction."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    conn.execute(
        "INSERT INTO audit_log (at, actor, action, object_type, object_id, detail) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (at, actor, action, object_type, object_id, Jsonb(dict(detail or {}))),
    )


def audit_entries(
    conn: psycopg.Connection[Any],
    *,
    since: datetime,
    until: datetime,
    actor: str | None = None,
    actions: tuple[str, ...] = (),
    object_id: str | None = None,
    limit: int = 500,
) -> pd.DataFrame:
    """Audit lines in [since, until), newest first, filtered by actor, actions and object."""
    conditions = ["at >= %(since)s", "at < %(until)s"]
    if actor:
        conditions.append("actor = %(actor)s")
    if actions:
        conditions.append("action = ANY(%(actions)s)")
    if object_id:
        conditions.append("object_id = %(object_id)s")
    query = (
        "SELECT at, actor, action, object_type, object_id, detail FROM audit_log "  # noqa: S608
        f"WHERE {' AND '.join(conditions)} ORDER BY at DESC, id DESC LIMIT %(limit)s"
    )
    params = {
        "since": since, "until": until, "actor": actor, "actions": list(actions),
        "object_id": object_id, "limit": limit,
    }  # fmt: skip
    return frame(conn, query, params)
