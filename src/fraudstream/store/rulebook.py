"""The rule book: versions of the decision rules that analysts draft, supervisors approve and
publish, and engines pick up without a restart.

Four eyes: a version is approved by a supervisor who did not draft it; only an approved
version is published. Publishing an earlier version is the one-step rollback. The newest
``live`` publication decides; the newest ``shadow`` one runs beside it, stored and never acted
on. Every step is audited.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import pandas as pd
import psycopg
from psycopg.types.json import Jsonb

from fraudstream.policy.rules import RulesError, RuleSet, rules_from
from fraudstream.store import audit
from fraudstream.store.db import frame
from fraudstream.store.users import User

__all__ = [
    "Published",
    "RuleBookError",
    "approve",
    "checked_rules",
    "draft",
    "publish",
    "published",
    "published_versions",
    "shadow_days",
    "stop_shadow",
    "version_rules",
    "versions",
]

Target = Literal["live", "shadow"]


class RuleBookError(ValueError):
    """A rule-book step that cannot be taken; the message says why."""


@dataclass(frozen=True)
class Published:
    """A published version: its number and its rules (named ``book-N``)."""

    version: int
    rules: RuleSet


def checked_rules(rules: Sequence[Mapping[str, Any]], name: str = "the draft") -> RuleSet:
    """``rules`` as a rule set named ``name``, checked as a rules file is."""
    try:
        return rules_from({"version": name, "rule": list(rules)}, name)
    except RulesError as error:
        raise RuleBookError(str(error)) from None


def draft(
    conn: psycopg.Connection[Any],
    rules: Sequence[Mapping[str, Any]],
    *,
    note: str,
    by: User,
    at: datetime,
) -> int:
    """A new version from ``rules`` (checked as a rules file is); returns its number."""
    checked = checked_rules(rules, "the draft")
    stored = [rule.model_dump(mode="json", exclude_unset=True) for rule in checked.rule]
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO rule_versions (rules, note, drafted_by, drafted_at) "
            "VALUES (%s, %s, %s, %s) RETURNING version",
            (Jsonb(stored), note.strip(), by.username, at),
        ).fetchone()
        assert row is not None
        version = int(str(row[0]))
        audit.record(
            conn, at=at, actor=by.username, action="rules.draft", object_type="rules",
            object_id=str(version), detail={"rules": len(stored), "note": note.strip()},
        )  # fmt: skip
    return version


def _version(conn: psycopg.Connection[Any], version: int) -> tuple[str, str | None]:
    row = conn.execute(
        "SELECT drafted_by, approved_by FROM rule_versions WHERE version = %s FOR UPDATE",
        (version,),
    ).fetchone()
    if row is None:
        raise RuleBookError(f"no rule version {version}")
    return str(row[0]), None if row[1] is None else str(row[1])


def approve(conn: psycopg.Connection[Any], version: int, *, by: User, at: datetime) -> None:
    """A supervisor who did not draft ``version`` approves it."""
    if not by.can("supervisor"):
        raise RuleBookError("a supervisor approves rules")
    with conn.transaction():
        drafted_by, approved_by = _version(conn, version)
        if approved_by is not None:
            raise RuleBookError(f"version {version} was already approved by {approved_by}")
        if drafted_by == by.username:
            raise RuleBookError(
                f"version {version} was drafted by {by.username}: another supervisor approves it"
            )
        conn.execute(
            "UPDATE rule_versions SET approved_by = %s, approved_at = %s WHERE version = %s",
            (by.username, at, version),
        )
        audit.record(
            conn, at=at, actor=by.username, action="rules.approve", object_type="rules",
            object_id=str(version),
        )  # fmt: skip


def publish(
    conn: psycopg.Connection[Any],
    version: int,
    *,
    by: User,
    at: datetime,
    target: Target = "live",
) -> None:
    """Make an approved ``version`` the live rules (or the shadow ones). Publishing an
    earlier version than the live one is a rollback, and audited as one."""
    if not by.can("supervisor"):
        raise RuleBookError("a supervisor publishes rules")
    with conn.transaction():
        _drafted_by, approved_by = _version(conn, version)
        if approved_by is None:
            raise RuleBookError(f"version {version} is not approved: it cannot be published")
        current = published(conn, target)
        action = "rules.shadow" if target == "shadow" else "rules.publish"
        if target == "live" and current is not None and version < current.version:
            action = "rules.rollback"
        conn.execute(
            "INSERT INTO rule_publications (target, version, published_by, published_at) "
            "VALUES (%s, %s, %s, %s)",
            (target, version, by.username, at),
        )
        audit.record(
            conn, at=at, actor=by.username, action=action, object_type="rules",
            object_id=str(version),
            detail={"target": target, "previous": None if current is None else current.version},
        )  # fmt: skip


def stop_shadow(conn: psycopg.Connection[Any], *, by: User, at: datetime) -> None:
    if not by.can("supervisor"):
        raise RuleBookError("a supervisor stops shadow rules")
    with conn.transaction():
        conn.execute(
            "INSERT INTO rule_publications (target, version, published_by, published_at) "
            "VALUES ('shadow', NULL, %s, %s)",
            (by.username, at),
        )
        audit.record(
            conn, at=at, actor=by.username, action="rules.shadow", object_type="rules",
            object_id="none", detail={"target": "shadow", "stopped": True},
        )  # fmt: skip


def version_rules(conn: psycopg.Connection[Any], version: int) -> RuleSet:
    row = conn.execute("SELECT rules FROM rule_versions WHERE version = %s", (version,)).fetchone()
    if row is None:
        raise RuleBookError(f"no rule version {version}")
    return checked_rules(row[0], f"book-{version}")


def published(conn: psycopg.Connection[Any], target: Target = "live") -> Published | None:
    """The newest publication of ``target``, with its rules; None when there is none (the
    rules file or the built-in rules decide) or the shadow was stopped."""
    row = conn.execute(
        "SELECT p.version, v.rules FROM rule_publications p "
        "LEFT JOIN rule_versions v USING (version) WHERE p.target = %s "
        "ORDER BY p.id DESC LIMIT 1",
        (target,),
    ).fetchone()
    if row is None or row[0] is None:
        return None
    version = int(str(row[0]))
    return Published(version, checked_rules(row[1], f"book-{version}"))


def published_versions(conn: psycopg.Connection[Any]) -> dict[str, int | None]:
    """The newest published version of each target (a stopped shadow: None), without their
    rules: what an engine checks every few seconds, parsing rules only when one changed."""
    rows = conn.execute(
        "SELECT DISTINCT ON (target) target, version FROM rule_publications "
        "ORDER BY target, id DESC"
    ).fetchall()
    return {str(target): None if version is None else int(str(version)) for target, version in rows}


def shadow_days(conn: psycopg.Connection[Any], since: datetime) -> pd.DataFrame:
    """Each shadow rule set beside the live decisions of the same rows, day by day (UTC):
    how many each flagged (review or decline), where they differ, and the labelled frauds
    each caught so far."""
    return frame(
        conn,
        """
        SELECT s.rules_version, (s.event_time AT TIME ZONE 'UTC')::date AS day,
               count(*) AS transactions,
               count(*) FILTER (WHERE p.decision <> 'approve') AS live_flagged,
               count(*) FILTER (WHERE s.decision <> 'approve') AS shadow_flagged,
               count(*) FILTER (WHERE s.decision <> p.decision) AS differ,
               count(*) FILTER (WHERE f.tx_id IS NOT NULL) AS frauds,
               count(*) FILTER (WHERE f.tx_id IS NOT NULL AND p.decision <> 'approve')
                   AS live_caught,
               count(*) FILTER (WHERE f.tx_id IS NOT NULL AND s.decision <> 'approve')
                   AS shadow_caught
        FROM shadow_rule_decisions s JOIN fraud_predictions p USING (tx_id)
        LEFT JOIN (SELECT DISTINCT tx_id FROM labels WHERE is_fraud) f USING (tx_id)
        WHERE s.event_time >= %s
        GROUP BY 1, 2 ORDER BY 2 DESC, 1
        """,
        (since,),
    )


def versions(conn: psycopg.Connection[Any]) -> pd.DataFrame:
    """Every version, newest first, with its status: draft, approved, live, shadow or
    retired (was live), and when it was last published."""
    return frame(
        conn,
        """
        WITH latest AS (
            SELECT DISTINCT ON (target) target, version FROM rule_publications
            ORDER BY target, id DESC
        )
        SELECT v.version, v.note, v.rules, v.drafted_by, v.drafted_at, v.approved_by,
               v.approved_at,
               CASE WHEN v.version = (SELECT version FROM latest WHERE target = 'live')
                        THEN 'live'
                    WHEN v.version = (SELECT version FROM latest WHERE target = 'shadow')
                        THEN 'shadow'
                    WHEN EXISTS (SELECT 1 FROM rule_publications p
                                 WHERE p.version = v.version) THEN 'retired'
                    WHEN v.approved_by IS NOT NULL THEN 'approved'
                    ELSE 'draft' END AS status,
               (SELECT max(published_at) FROM rule_publications p
                WHERE p.version = v.version) AS published_at
        FROM rule_versions v ORDER BY v.version DESC
        """,
    )
