"""Schema creation and migration, applied by the application itself, idempotently.

Each ``migrations/NNNN_name.sql`` file is one version, applied once inside a transaction and
recorded in ``schema_migrations`` with a checksum, so an edited past migration is detected
instead of silently diverging. An advisory lock serialises concurrent starters.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import psycopg

__all__ = ["Migration", "MigrationError", "applied_versions", "is_current", "migrate", "migrations"]

_LOCK_KEY = 0x66726175  # "frau": one advisory lock id for all migrators of this schema
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """The database's recorded schema disagrees with this version of fraudstream."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@cache
def migrations() -> tuple[Migration, ...]:
    """The migrations shipped with the package, in version order."""
    found = []
    for entry in resources.files("fraudstream.store").joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"migration versions must be 1..N without gaps, found {versions}")
    return tuple(found)


_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


def applied_versions(conn: psycopg.Connection[tuple[object, ...]]) -> dict[int, str]:
    """Recorded version → checksum; empty when the schema was never created."""
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
    return {int(str(version)): str(checksum) for version, checksum in rows}


def _check_history(applied: dict[int, str]) -> None:
    known = {migration.version: migration for migration in migrations()}
    for version, checksum in sorted(applied.items()):
        if version not in known:
            raise MigrationError(
                f"the database has schema version {version}, newer than this fraudstream knows "
                f"({max(known, default=0)}): upgrade fraudstream"
            )
        if known[version].checksum != checksum:
            raise MigrationError(
                f"migration {version} ({known[version].name}) differs from the one applied to "
                "this database; past migrations must never be edited"
            )


def is_current(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    applied = applied_versions(conn)
    _check_history(applied)
    return set(applied) == {migration.version for migration in migrations()}


def migrate(conn: psycopg.Connection[tuple[object, ...]]) -> list[Migration]:
    """Apply the pending migrations in one transaction; returns those applied (none if current)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(_BOOKKEEPING)
        applied = applied_versions(conn)
        _check_history(applied)
        pending = [m for m in migrations() if m.version not in applied]
        for migration in pending:
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
    return pending
