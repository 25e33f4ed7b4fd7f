"""`fraudstream api` (the decision API in the foreground) and `fraudstream api-keys`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from fraudstream.cli._options import err, fail, out, settings_of

__all__ = ["api", "keys_app"]

keys_app = typer.Typer(
    help="API keys for the decision API: shown once at creation, stored hashed.",
    no_args_is_help=True,
)


def api(
    ctx: typer.Context,
    openapi: Annotated[
        Path | None,
        typer.Option(help="Write the OpenAPI document to this file (- for stdout) and exit."),
    ] = None,
) -> None:
    """Serve the decision API, POST /v1/decisions, on api.host:api.port (127.0.0.1:8000 by
    default) until Ctrl-C; `up` runs it as the `api` service. Keys: `fraudstream api-keys`."""
    settings = settings_of(ctx)
    if openapi is not None:
        from fraudstream.api.app import create_app

        document = json.dumps(create_app(settings).openapi(), indent=2, sort_keys=True) + "\n"
        if str(openapi) == "-":
            out.print(document, end="", markup=False, highlight=False)
        else:
            openapi.write_text(document)
        return
    from fraudstream.api.server import listening_problem, serve

    problem = listening_problem(settings.api)
    if problem:
        fail(problem, 2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    scheme = "https" if settings.api.tls else "http"
    err.print(f"decision API on {scheme}://{settings.api.host}:{settings.api.port}/v1/decisions")
    serve(settings)


@keys_app.command("create")
def create(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Who the key is for.")]
) -> None:
    """Create a key and print it (once: only its hash is stored)."""
    from fraudstream.api.keys import ApiKeyError, create_key
    from fraudstream.store.db import connect

    # The owner's connection, here and in revoke: the API's own user may only read keys.
    with connect(settings_of(ctx)) as conn:
        try:
            record, token = create_key(conn, name)
        except ApiKeyError as error:
            fail(str(error), 2)
    err.print(f"key {record.name!r} created; it is shown this once:")
    out.print(token, markup=False, highlight=False)


@keys_app.command("list")
def list_(ctx: typer.Context) -> None:
    """Every key: name, prefix, created, revoked."""
    from fraudstream.api.keys import list_keys
    from fraudstream.store.db import connect

    with connect(settings_of(ctx)) as conn:
        keys = list_keys(conn)
    for key in keys:
        state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        out.print(f"{key.name}\t{key.prefix}…\tcreated {key.created_at:%Y-%m-%d %H:%M}\t{state}")


@keys_app.command("revoke")
def revoke(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="The key's name.")]
) -> None:
    """Revoke a key: refused within a few seconds by every API process."""
    from fraudstream.api.keys import ApiKeyError, revoke_key
    from fraudstream.store.db import connect

    with connect(settings_of(ctx)) as conn:
        try:
            key = revoke_key(conn, name)
        except ApiKeyError as error:
            fail(str(error), 2)
    err.print(f"key {key.name!r} revoked")
