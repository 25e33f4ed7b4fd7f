"""The services' own PostgreSQL users, so that a bug or a crafted input in one cannot change
what it has no business changing: the engines read everything and write only what they
produce (predictions and their projections, checkpoints, card changes, dead letters' records,
labels from the topic, sealed terminal tables, cases they open, quality, status); the
dashboard reads everything and may only add labels,
review decisions, case notes, audit lines, rule versions and list entries, move cases,
approve and publish rules, remove list entries and manage users (never change or remove an
audit line, a prediction, a rule version's content or a model's record); the decision API
reads stored decisions and key digests and may only add degraded answers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

__all__ = [
    "API_ROLE",
    "DASHBOARD_ROLE",
    "ENGINE_ROLE",
    "ENGINE_TABLES",
    "ensure_api_role",
    "ensure_dashboard_role",
    "ensure_engine_role",
]

DASHBOARD_ROLE = "fraudstream_dashboard"
API_ROLE = "fraudstream_api"
ENGINE_ROLE = "fraudstream_engine"

ENGINE_TABLES = (
    "fraud_predictions", "stream_checkpoints", "feature_state", "card_changes", "dlq_events",
    "engine_status", "rollup_minute", "feature_hour", "terminal_daily", "terminal_tables",
    "terminal_locations", "labels", "cases", "case_alerts", "shadow_predictions",
    "shadow_rule_decisions", "deferred_rows", "quality_daily", "quality_histogram",
    "model_events", "model_profiles", "decision_pins", "decision_rule_sets",
)  # fmt: skip
"""What the engines write (inserts and upserts); of these they delete only card checkpoints
(pruned, or forgotten for another feature set) and the Spark engine's deferred rows. They
also add audit lines (a rollback)."""


def ensure_engine_role(conn: psycopg.Connection[Any], password: str) -> None:
    """Create (or update) the engines' role and grant it exactly its rights on the current
    database: every table read (the rule book, the lists, the labels...), its own tables
    written, nothing dropped, altered or truncated, and none of the analysts' or the API's
    records (users, audit, rule versions, lists, keys, reviews) written. Idempotent; needs
    CREATEROLE and the schema at version 11 or later."""
    _ensure_role(
        conn,
        ENGINE_ROLE,
        password,
        [
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {role}",
            f"GRANT INSERT, UPDATE ON {', '.join(ENGINE_TABLES)} TO {{role}}",
            "GRANT DELETE ON card_changes, feature_state, deferred_rows TO {role}",
            # A rollback below the quality floor is audited like an analyst's action.
            "GRANT INSERT ON audit_log TO {role}",
            "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
        ],
    )


def ensure_dashboard_role(conn: psycopg.Connection[Any], password: str) -> None:
    """Create (or update) the dashboard's role and grant it exactly its rights on the current
    database, including tables that later migrations create. Idempotent; needs CREATEROLE and
    the schema at version 10 or later."""
    _ensure_role(
        conn,
        DASHBOARD_ROLE,
        password,
        [
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {role}",
            "GRANT INSERT ON labels, review_decisions, case_notes, audit_log, app_users TO {role}",
            "GRANT USAGE ON SEQUENCE review_decisions_id_seq, case_notes_id_seq, "
            "audit_log_id_seq TO {role}",
            "GRANT UPDATE (status, assignee, updated_at, resolved_at, resolved_by) ON cases "
            "TO {role}",
            "GRANT UPDATE (role, password_hash, disabled_at) ON app_users TO {role}",
            "GRANT INSERT ON rule_versions, rule_publications, list_entries TO {role}",
            "GRANT USAGE ON SEQUENCE rule_versions_version_seq, rule_publications_id_seq, "
            "list_entries_id_seq TO {role}",
            "GRANT UPDATE (approved_by, approved_at) ON rule_versions TO {role}",
            "GRANT UPDATE (removed_by, removed_at) ON list_entries TO {role}",
        ],
    )


def ensure_api_role(conn: psycopg.Connection[Any], password: str) -> None:
    """Create (or update) the decision API's role and grant it exactly its rights on the
    current database: the stored decisions (replays) and the keys, read; degraded answers,
    added; the rule book and the lists, read. Idempotent; needs CREATEROLE and the schema at
    version 10 or later."""
    _ensure_role(
        conn,
        API_ROLE,
        password,
        [
            "GRANT SELECT ON fraud_predictions, api_keys TO {role}",
            # The fallback decides by the published rules and the lists in force.
            "GRANT SELECT ON rule_versions, rule_publications, list_entries TO {role}",
            "GRANT INSERT ON degraded_decisions TO {role}",
            # ON CONFLICT (tx_id) reads the arbiter's column: that column, not the rows.
            "GRANT SELECT (tx_id) ON degraded_decisions TO {role}",
        ],
    )


def _ensure_role(
    conn: psycopg.Connection[Any], name: str, password: str, grants: Sequence[str]
) -> None:
    role = sql.Identifier(name)
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
    # Utility statements take no bind parameters: the password goes in as a quoted literal.
    # A role is created without any attribute beyond LOGIN (not a superuser, no databases,
    # no roles); an existing one only gets its password again (the owner is no superuser,
    # and only a superuser may even restate the SUPERUSER attribute).
    statement = (
        "ALTER ROLE {} LOGIN PASSWORD {}"
        if exists
        else ("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}")
    )
    conn.execute(sql.SQL(statement).format(role, sql.Literal(password)))
    database = conn.execute("SELECT current_database()").fetchone()
    assert database is not None
    for statement in (
        "GRANT CONNECT ON DATABASE {database} TO {role}",
        "GRANT USAGE ON SCHEMA public TO {role}",
        *grants,
    ):
        conn.execute(
            sql.SQL(statement).format(role=role, database=sql.Identifier(str(database[0])))
        )
    conn.commit()
