"""`fraudstream config`: every setting, its value and its environment variable."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from fraudstream.cli._options import out, settings_of
from fraudstream.config import env_name, setting_paths


def show_config(ctx: typer.Context) -> None:
    """List every setting with its current value and environment variable (secrets hidden)."""
    settings = settings_of(ctx)
    table = Table("setting", "value", "environment variable", box=None)
    for path in setting_paths():
        value: Any = settings
        for part in path.split("."):
            value = getattr(value, part)
        shown = "**********" if value is not None and "Secret" in type(value).__name__ else value
        table.add_row(path, str(shown), env_name(path))
    out.print(table)
