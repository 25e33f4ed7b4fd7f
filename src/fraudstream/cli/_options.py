"""What the commands share: the consoles, the settings that the global options choose, the
environment of the processes a command starts, failing with one clear line, stop signals."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console

from fraudstream.config import CONFIG_FILE_ENV, Settings, env_name, load_settings, secret_paths
from fraudstream.stack import Stack

if TYPE_CHECKING:
    from rich.progress import Progress

out = Console()
err = Console(stderr=True)


class Options:
    """The global options (--config, --state-dir, --set), kept in the Typer context."""

    def __init__(self, config: Path | None, overrides: dict[str, str]) -> None:
        self.config = config
        self.overrides = overrides
        self._settings: Settings | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(config_file=self.config, overrides=self.overrides)
        return self._settings


def parse_overrides(values: list[str]) -> dict[str, str]:
    overrides = {}
    secrets = secret_paths()
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE (e.g. kafka.port=9095), got {item!r}")
        if key.strip().lower() in secrets:
            # Named without the value: the value is what must not show anywhere.
            raise typer.BadParameter(
                f"{key.strip()} is a secret: give it in the environment "
                f"({env_name(key.strip().lower())}) or a --config file, never on the command "
                "line, where every local user can read it in the process list"
            )
        overrides[key.strip()] = value
    return overrides


def settings_of(ctx: typer.Context) -> Settings:
    options: Options = ctx.obj
    return options.settings()


def child_env(ctx: typer.Context) -> dict[str, str]:
    """The environment for processes this command starts: its own, plus its --config and --set
    choices, so that the children see the same settings."""
    options: Options = ctx.obj
    env = dict(os.environ)
    if options.config is not None:
        env[CONFIG_FILE_ENV] = str(options.config.absolute())
    for key, value in options.overrides.items():
        env[env_name(key)] = value
    return env


def stack_of(ctx: typer.Context) -> Stack:
    """The stack, its engine, simulator and dashboard processes seeing this command's settings."""
    options: Options = ctx.obj
    return Stack(options.settings(), child_env=child_env(ctx))


def print_error(message: str) -> None:
    err.print("[bold red]error:[/] ", end="")
    err.print(message, markup=False, highlight=False)


def fail(message: str, code: int = 1) -> NoReturn:
    print_error(message)
    raise typer.Exit(code)


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM and SIGINT (Ctrl-C) set, for a clean stop."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop


def print_step(started: float, message: str, width: int = 6) -> None:
    """A progress line on stderr: seconds since ``started`` (``time.monotonic``), then the
    step. Terminal or not, one line each, never wrapped or read as markup: a log shows what
    ran and where the time went."""
    elapsed = time.monotonic() - started
    err.print(f"{elapsed:{width}.1f} s  {message}", markup=False, highlight=False, soft_wrap=True)


def progress_bar() -> Progress:
    """A progress bar on stderr: description, bar, done/total, time elapsed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=err,
    )  # fmt: skip
