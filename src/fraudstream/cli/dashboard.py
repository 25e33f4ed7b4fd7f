"""`fraudstream dashboard`: the Streamlit dashboard in the foreground."""

from __future__ import annotations

import os
import sys

import typer

from fraudstream.cli._options import child_env, err, fail, settings_of
from fraudstream.config import env_name


def dashboard(ctx: typer.Context) -> None:
    """Serve the Streamlit dashboard (Live, Review queue, Model quality, Drift, Explore, System)
    on dashboard.host:dashboard.port, 127.0.0.1:8501 by default; in the foreground until
    Ctrl-C (`up` runs it as the `dashboard` service)."""
    from fraudstream.dashboard.server import streamlit_command

    settings = settings_of(ctx).dashboard
    if not settings.loopback and settings.password is None:
        fail(
            f"dashboard.host is {settings.host}, not loopback: set dashboard.password "
            f"({env_name('dashboard.password')}) so that the dashboard asks for it",
            2,
        )
    argv = streamlit_command(settings)
    err.print(f"dashboard on http://{settings.host}:{settings.port}")
    os.execvpe(sys.executable, argv, child_env(ctx))  # noqa: S606 (signals reach Streamlit)
