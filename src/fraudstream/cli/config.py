"""`fraudstream config`: every setting, its value and its environment variable."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from fraudstream.cli._options import out, settings_of
from fraudstream.config import env_name, setting_paths


def show_config(ctx: typer.Context) -> None:
    """List every setting with its current value and environment variable (secrets hidden);
    tab-separated and never cut when the output is not a terminal."""
    settings = settings_of(ctx)
    table = Table("setting", "value", "environment variable", box=None)
    for path in setting_paths():
        value: Any = settings
        for part in path.split("."):
            value = getattr(value, part)
        shown = "**********" if value is not None and "Secret" in type(value).__name__ else value
        if out.is_terminal:
            table.add_row(path, str(shown), env_name(path))
        else:
            typer.echo(f"{path}\t{shown}\t{env_name(path)}")
    if out.is_terminal:
        out.print(table)
