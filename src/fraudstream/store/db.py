"""Connections to PostgreSQL: the managed embedded server or the one named by database.url."""

from __future__ import annotations

import psycopg

from fraudstream.config import Settings

__all__ = ["api_conninfo", "connect", "conninfo", "dashboard_conninfo"]


def conninfo(settings: Settings) -> str:
    """libpq connection string for the configured database (contains the password: never log)."""
    if settings.database.url is not None:
        return settings.database.url.get_secret_value()
    from fraudstream.stack.postgres import EmbeddedPostgres  # the stack imports this module

    return EmbeddedPostgres(settings).conninfo()


def dashboard_conninfo(settings: Settings) -> str:
    """The dashboard's connection: its own restricted user where there is one (the managed
    server's, or ``dashboard.database_url``), else the engine's (an external database without
    a dashboard user; the System page says so)."""
    if settings.dashboard.database_url is not None:
        return settings.dashboard.database_url.get_secret_value()
    if settings.database.url is not None:
        return settings.database.url.get_secret_value()
    from fraudstream.stack.postgres import EmbeddedPostgres

    return EmbeddedPostgres(settings).dashboard_conninfo()


def api_conninfo(settings: Settings) -> str:
    """The decision API's connection: ``api.database_url`` when set, else the configured
    database's."""
    if settings.api.database_url is not None:
        return settings.api.database_url.get_secret_value()
    return conninfo(settings)


def connect(
    settings: Settings, *, autocommit: bool = False
) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        conninfo(settings),
        autocommit=autocommit,
        connect_timeout=max(1, int(settings.database.connect_timeout_s)),
        application_name="fraudstream",
    )
