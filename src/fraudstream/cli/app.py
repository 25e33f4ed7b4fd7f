"""The ``fraudstream`` command: one sub-command per action, settings from flags, env or file.

The global options live here; each group of sub-commands has its module (stack, data, model,
engine, dashboard, bench, config), registered below in the order ``--help`` lists them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperOption

from fraudstream import __version__
from fraudstream.bus import BusError, DeliveryError
from fraudstream.cli import api, bench, dashboard, data, engine, model, rules, stack, users
from fraudstream.cli._options import Options, out, parse_overrides, print_error
from fraudstream.cli.config import show_config
from fraudstream.config import CONFIG_FILE_ENV, SettingsError, env_name
from fraudstream.model.registry import RegistryError
from fraudstream.stack import ServiceError
from fraudstream.stack.process import PRIVATE_UMASK
from fraudstream.store.migrations import MigrationError


def _flags_without_a_type() -> None:
    """Typer's help shows each option's value type, ``<bool>`` even for a flag, which takes
    no value (``--forever``, not ``--forever true``): for flags it shows none."""
    shown = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_without_a_type()

app = typer.Typer(
    name="fraudstream",
    help="Real-time card-fraud detection on Kafka and PostgreSQL.\n\n"
    "Every setting can also come from a FRAUDSTREAM_… environment variable or a TOML file; "
    "`fraudstream config` lists them all.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar=CONFIG_FILE_ENV,
            show_envvar=True,
            help="TOML file with settings (lowest precedence).",
        ),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(help=f"Where services keep data and logs (env {env_name('state_dir')})."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", metavar="KEY=VALUE", help="Override one setting, e.g. kafka.port=9095."
        ),
    ] = None,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(f"fraudstream {__version__}")
        raise typer.Exit()
    overrides = parse_overrides(set_ or [])
    if state_dir is not None:
        overrides["state_dir"] = str(state_dir)
    ctx.obj = Options(config, overrides)


def _register(*commands: Callable[..., None]) -> None:
    for command in commands:
        app.command()(command)


_register(
    stack.up, stack.down, stack.status, stack.logs, stack.doctor, stack.setup, stack.init,
    stack.health,
)  # fmt: skip
app.command("config")(show_config)
_register(
    data.simulate, data.replay, data.schema, model.train, model.evaluate, engine.score,
    model.quality, model.retrain, dashboard.dashboard, api.api, bench.bench,
)  # fmt: skip
app.add_typer(model.models_app, name="models")
app.add_typer(api.keys_app, name="api-keys")
app.add_typer(users.users_app, name="users")
app.add_typer(rules.rules_app, name="rules")
app.add_typer(rules.lists_app, name="lists")


def main() -> None:
    """Console-script entry point: turns known failures into one clear line and an exit code.
    Whatever it and the services it starts create is private to this account."""
    os.umask(PRIVATE_UMASK)
    try:
        app()
    except SettingsError as error:
        print_error(str(error))
        sys.exit(2)
    except (ServiceError, BusError, MigrationError, DeliveryError, RegistryError) as error:
        print_error(str(error))
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
