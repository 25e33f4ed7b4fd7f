"""The dashboard's own PostgreSQL user: it reads everything and may only add labels and
review decisions, so a bug or a crafted input in the UI cannot change predictions."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

__all__ = ["DASHBOARD_ROLE", "ensure_dashboard_role"]

DASHBOARD_ROLE = "fraudstream_dashboard"


def ensure_dashboard_role(conn: psycopg.Connection[Any], password: str) -> None:
    """Create (or update) the role and grant it exactly its rights on the current database,
    including tables that later migrations create. Idempotent; needs CREATEROLE."""
    role = sql.Identifier(DASHBOARD_ROLE)
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DASHBOARD_ROLE,))
    verb = sql.SQL("ALTER") if exists.fetchone() else sql.SQL("CREATE")
    # Utility statements take no bind parameters: the password goes in as a quoted literal.
    conn.execute(
        sql.SQL("{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
            verb, role, sql.Literal(password)
        )
    )
    database = conn.execute("SELECT current_database()").fetchone()
    assert database is not None
    for statement in (
        "GRANT CONNECT ON DATABASE {database} TO {role}",
        "GRANT USAGE ON SCHEMA public TO {role}",
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {role}",
        "GRANT INSERT ON labels, review_decisions TO {role}",
        "GRANT USAGE ON SEQUENCE review_decisions_id_seq TO {role}",
    ):
        conn.execute(
            sql.SQL(statement).format(role=role, database=sql.Identifier(str(database[0])))
        )
    conn.commit()
