"""`fraudstream dashboard`: the Streamlit dashboard in the foreground."""

from __future__ import annotations

import os
import sys

import typer

from fraudstream.cli._options import child_env, err, fail, settings_of


def _active_users(ctx: typer.Context) -> int:
    """Active dashboard users (0 when the database cannot say: the dashboard would refuse)."""
    from fraudstream.store.db import connect
    from fraudstream.store.users import user_count

    try:
        with connect(settings_of(ctx)) as conn:
            return user_count(conn)
    except Exception:  # unreachable, not set up: no user can sign in either way
        return 0


def dashboard(ctx: typer.Context) -> None:
    """Serve the Streamlit dashboard (Live, Cases, Model quality, Drift, Explore, System;
    Audit and Users by role) on dashboard.host:dashboard.port, 127.0.0.1:8501 by default; in
    the foreground until Ctrl-C (`up` runs it as the `dashboard` service)."""
    from fraudstream.dashboard.server import streamlit_command

    settings = settings_of(ctx).dashboard
    if not settings.loopback and _active_users(ctx) == 0:
        fail(
            f"dashboard.host is {settings.host}, not loopback, and there is no user to sign "
            "in: create one first (`fraudstream users create NAME --role admin`)",
            2,
        )
    argv = streamlit_command(settings)
    err.print(f"dashboard on http://{settings.host}:{settings.port}")
    os.execvpe(sys.executable, argv, child_env(ctx))  # noqa: S606 (signals reach Streamlit)
