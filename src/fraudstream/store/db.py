"""Connections to PostgreSQL: the managed embedded server or the one named by database.url."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pandas as pd
import psycopg
from pydantic import SecretStr

from fraudstream.config import Settings

if TYPE_CHECKING:
    from fraudstream.stack.postgres import EmbeddedPostgres

__all__ = [
    "HeldConnection",
    "api_conninfo",
    "connect",
    "conninfo",
    "dashboard_conninfo",
    "engine_connect",
    "engine_conninfo",
    "frame",
]


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
    return _own_user(settings, settings.dashboard.database_url, lambda pg: pg.dashboard_conninfo())


def api_conninfo(settings: Settings) -> str:
    """The decision API's connection: its own restricted user where there is one (the managed
    server's, or ``api.database_url``), else the engine's (an external database without an
    API user). Keys are created and revoked with ``connect``: the owner's."""
    return _own_user(settings, settings.api.database_url, lambda pg: pg.api_conninfo())


def _own_user(
    settings: Settings, url: SecretStr | None, managed: Callable[[EmbeddedPostgres], str]
) -> str:
    if url is not None:
        return url.get_secret_value()
    if settings.database.url is not None:
        return settings.database.url.get_secret_value()
    from fraudstream.stack.postgres import EmbeddedPostgres

    return managed(EmbeddedPostgres(settings))


def engine_conninfo(settings: Settings) -> str:
    """The engines' connection: their own restricted user where there is one (the managed
    server's, or ``engine.database_url``), else the owner's (an external database without an
    engine user)."""
    return _own_user(settings, settings.engine.database_url, lambda pg: pg.engine_conninfo())


def connect(
    settings: Settings, *, autocommit: bool = False
) -> psycopg.Connection[tuple[object, ...]]:
    """The owner's connection: migrations, the CLI's administration, the tests."""
    return _connect(conninfo(settings), settings, autocommit)


def engine_connect(
    settings: Settings, *, autocommit: bool = False
) -> psycopg.Connection[tuple[object, ...]]:
    """An engine's connection, as its own user (``engine_conninfo``)."""
    return _connect(engine_conninfo(settings), settings, autocommit, name="fraudstream-engine")


def _connect(
    info: str, settings: Settings, autocommit: bool, name: str = "fraudstream"
) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        info,
        autocommit=autocommit,
        connect_timeout=max(1, int(settings.database.connect_timeout_s)),
        application_name=name,
    )


class HeldConnection:
    """One connection kept open between a thread's periodic reads (``with held() as conn``),
    opened again after a failure. Opening one costs both sides a SCRAM exchange (thousands of
    hash rounds) and the server a new process: too much to do every couple of seconds."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self._connect = connect
        self._conn: psycopg.Connection[Any] | None = None

    @contextmanager
    def __call__(self) -> Iterator[psycopg.Connection[Any]]:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        try:
            yield self._conn
        except BaseException:
            self.close()  # its state is unknown: the next use opens another
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def frame(conn: psycopg.Connection[Any], query: str, params: Any = None) -> pd.DataFrame:
    """A query's rows as a DataFrame with its column names (empty, with them, when none)."""
    with conn.cursor() as cursor:
        rows = cursor.execute(query, params).fetchall()
        columns = [column.name for column in cursor.description or []]
    return pd.DataFrame(rows, columns=columns)
