"""`fraudstream users`: the dashboard's named users (create, list, set-role, password,
disable). Passwords are read from a hidden prompt or from standard input, never from the
command line (where the process list would show them)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from fraudstream.cli._options import err, fail, settings_of

users_app = typer.Typer(help="The dashboard's users: analyst, supervisor, admin.")

_BY = typer.Option(help="Who makes the change, for the audit (default: your login name).")
_STDIN = typer.Option(
    "--password-stdin", help="Read the password from standard input (one line), not a prompt."
)


def _actor(by: str | None) -> str:
    import getpass

    return by or f"os:{getpass.getuser()}"


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


def _run(ctx: typer.Context, change, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
    from fraudstream.clock import SystemClock
    from fraudstream.store.db import connect
    from fraudstream.store.users import UserError

    with connect(settings_of(ctx), autocommit=True) as conn:
        try:
            change(conn, *args, at=SystemClock().now(), **kwargs)
        except UserError as error:
            fail(str(error), 2)


@users_app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Lower-case letters, digits, '_', '.', '-'.")],
    role: Annotated[str, typer.Option(help="analyst | supervisor | admin")] = "analyst",
    password_stdin: Annotated[bool, _STDIN] = False,
    by: Annotated[str | None, _BY] = None,
) -> None:
    """Add a user who signs in to the dashboard with NAME and a password."""
    from fraudstream.store.users import create_user

    _run(ctx, create_user, name, role, _password(password_stdin), by=_actor(by))
    err.print(f"user {name!r} created ({role})")


@users_app.command("list")
def list_(ctx: typer.Context) -> None:
    """Every user: name, role, created, disabled."""
    from fraudstream.store.db import connect
    from fraudstream.store.users import list_users

    with connect(settings_of(ctx)) as conn:
        users = list_users(conn)
    for user in users.itertuples():
        state = "active" if user.disabled_at is None else f"disabled {user.disabled_at:%F %H:%M}"
        typer.echo(  # tab-separated, for scripts
            f"{user.username}\t{user.role}\tcreated {user.created_at:%F %H:%M} by "
            f"{user.created_by}\t{state}"
        )


@users_app.command("set-role")
def set_role(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument()],
    role: Annotated[str, typer.Argument(help="analyst | supervisor | admin")],
    by: Annotated[str | None, _BY] = None,
) -> None:
    """Change a user's role (applies at their next page view)."""
    from fraudstream.store.users import set_role as change

    _run(ctx, change, name, role, by=_actor(by))
    err.print(f"{name!r} is now {role}")


@users_app.command("password")
def password(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument()],
    password_stdin: Annotated[bool, _STDIN] = False,
    by: Annotated[str | None, _BY] = None,
) -> None:
    """Set a user's password."""
    from fraudstream.store.users import set_password

    _run(ctx, set_password, name, _password(password_stdin), by=_actor(by))
    err.print(f"password of {name!r} changed")


@users_app.command("disable")
def disable(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument()],
    by: Annotated[str | None, _BY] = None,
) -> None:
    """Disable a user: signed out at their next page view; kept for the audit."""
    from fraudstream.store.users import disable_user

    _run(ctx, disable_user, name, by=_actor(by))
    err.print(f"{name!r} disabled")
