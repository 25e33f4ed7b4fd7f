"""What every page shares: settings, the database connection, error display, masking.

A page asks ``read(query, ...)`` for data. A database error becomes one clear message on
the page (never a stack trace) and drops the connection, so the next refresh reconnects by
itself after a database restart.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

import pandas as pd
import psycopg
import streamlit as st

from fraudstream.config import Settings, SettingsError, load_settings
from fraudstream.privacy import mask_token
from fraudstream.store.db import dashboard_conninfo
from fraudstream.store.users import User

__all__ = [
    "LOCAL_OPERATOR",
    "Unavailable",
    "current_user",
    "masked",
    "now",
    "read",
    "settings",
    "show_empty",
    "stamp",
    "write",
]

T = TypeVar("T")


class Unavailable(Exception):
    """The database did not answer; the page has already said so."""


@st.cache_resource
def settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as error:
        st.error(f"Configuration error: {error}")
        st.stop()
        raise  # (st.stop ends the script run)


@st.cache_resource
def _connection() -> psycopg.Connection[Any]:
    config = settings()
    return psycopg.connect(
        dashboard_conninfo(config),
        autocommit=True,
        connect_timeout=max(1, int(config.database.connect_timeout_s)),
        application_name="fraudstream-dashboard",
    )


def now() -> datetime:
    return datetime.now(timezone.utc)


def read(query: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one query-module function on the shared connection; on a database error say so
    plainly, forget the connection (the next run reconnects) and stop this part of the page."""
    try:
        return query(_connection(), *args, **kwargs)
    except psycopg.Error as error:
        _connection.clear()
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        st.error(
            f"The database is not answering ({first}). This page retries by itself; "
            "`fraudstream status` shows whether PostgreSQL is running."
        )
        raise Unavailable(first) from None


write = read  # actions go through the same connection and error handling

LOCAL_OPERATOR = User("local", "admin")
"""Who acts on a loopback dashboard before any user exists (audited as ``local``)."""


def current_user() -> User:
    """The signed-in user (``app.py`` lets no page run without one)."""
    user = st.session_state.get("user")
    if not isinstance(user, User):
        st.error("Sign in first.")
        st.stop()
    return user


def stamp(value: Any) -> str:
    """A time as people read it on every page: UTC, to the second, zone named."""
    if value is None or (isinstance(value, float) and value != value) or value is pd.NaT:
        return "—"
    return f"{pd.Timestamp(value).tz_convert('UTC'):%Y-%m-%d %H:%M:%S} UTC"


def masked(frame: pd.DataFrame, column: str = "card_id") -> pd.DataFrame:
    """Card tokens as a person should see them (``mask_token``)."""
    if column in frame:
        frame = frame.assign(**{column: frame[column].map(mask_token)})
    return frame


def show_empty(what: str) -> None:
    st.info(
        f"No {what} yet — is the engine running? `fraudstream status` shows the services, "
        "`fraudstream up` starts them."
    )
