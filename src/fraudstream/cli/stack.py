"""The local stack's commands: up, down, status, logs, doctor, setup, init, health."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.table import Table

from fraudstream.cli._options import err, fail, out, print_step, settings_of, stack_of
from fraudstream.config import Settings
from fraudstream.stack import ServiceError, Stack
from fraudstream.stack import logs as service_logs


def up(ctx: typer.Context) -> None:
    """Start the local stack detached and return when it is healthy."""
    stack = stack_of(ctx)
    started = time.monotonic()
    with err.status("starting fraudstream…") as status:

        def progress(message: str) -> None:
            # A line per step, terminal or not (a log shows what `up` did and how long it
            # took); the spinner says what is happening now.
            print_step(started, message)
            status.update(message + "…")

        report = stack.up(progress=progress)
    elapsed = time.monotonic() - started
    if not report.changed:
        out.print(
            "fraudstream is already running "
            f"({', '.join(report.already_running) or 'external services'}); nothing changed"
        )
    else:
        if report.started:
            out.print(f"started {', '.join(report.started)} in {elapsed:.1f} s")
        if report.topics_created:
            out.print(f"created topics {', '.join(report.topics_created)}")
        if report.migrations_applied:
            out.print(f"database schema migrated to version {max(report.migrations_applied)}")
        if report.model_trained:
            out.print(f"trained and promoted a first model, {report.model_trained}")
    if report.api_keys == 0:  # the API runs and answers 401 until there is one
        out.print("decision API: no key yet; create a key: fraudstream api-keys create NAME")
    _print_status(stack)


def down(
    ctx: typer.Context,
    volumes: Annotated[
        bool, typer.Option("--volumes", "-v", help="Also delete all data (broker logs, database).")
    ] = False,
) -> None:
    """Stop the local stack cleanly."""
    settings = settings_of(ctx)
    stopped = stack_of(ctx).down(volumes=volumes)
    out.print(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
    if volumes:
        out.print(f"deleted {settings.state_dir}")


def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List each service with its state, pid, address and uptime."""
    stack = stack_of(ctx)
    if as_json:
        rows = [status.__dict__ for status in stack.status()]
        out.print_json(json.dumps(rows))
        return
    _print_status(stack)


def _print_status(stack: Stack) -> None:
    """A table on a terminal; in a pipe, tab-separated lines that are never cut."""
    columns = ("service", "state", "pid", "address", "uptime", "metrics", "now")
    table = Table(*columns, box=None)
    colours = {"running": "green", "external": "green", "starting": "yellow"}
    for row in stack.status():
        cells = [
            row.name, row.state, str(row.pid or "-"), row.address, _duration(row.uptime_s),
            row.metrics or "-", row.detail or "-",
        ]  # fmt: skip
        if not out.is_terminal:
            typer.echo("\t".join(cells))
            continue
        cells[1] = f"[{colours.get(row.state, 'red')}]{row.state}[/]"
        table.add_row(*cells)
    if out.is_terminal:
        out.print(table)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def logs(
    ctx: typer.Context,
    service: Annotated[
        str | None,
        typer.Argument(
            help="kafka, postgres, engine, api, simulator or dashboard; all when omitted."
        ),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    tail: Annotated[int, typer.Option("--tail", "-n", min=0, help="Lines to show first.")] = 50,
) -> None:
    """Show or follow a service's log."""
    files = stack_of(ctx).log_files()
    if service is not None:
        if service not in files:
            fail(
                f"unknown service {service!r}: "
                f"choose from {', '.join(files) or 'none (all external)'}",
                2,
            )
        files = {service: files[service]}
    prefix = len(files) > 1
    for name, path in files.items():
        for line in service_logs.last_lines(path, tail):
            typer.echo(f"{name} | {line}" if prefix else line)
    if follow:
        try:
            for name, line in service_logs.follow(files):
                typer.echo(f"{name} | {line}" if prefix else line)
        except KeyboardInterrupt:
            pass


def doctor(ctx: typer.Context) -> None:
    """Check the prerequisites (Java 17+, Maven, free ports, disk, memory)."""
    from fraudstream.stack.doctor import run_checks

    checks = run_checks(settings_of(ctx))
    for check in checks:
        mark = "[green]✓[/]" if check.ok else "[red]✗[/]"
        out.print(f"{mark} {check.name}: {check.detail}", highlight=False)
        if not check.ok and check.fix:
            out.print(f"    fix: {check.fix}", highlight=False)
    failed = [check.name for check in checks if not check.ok]
    if failed:
        fail(f"{len(failed)} check(s) failed: {', '.join(failed)}")
    out.print("all checks passed")


def setup(ctx: typer.Context) -> None:
    """Fetch what the local stack needs once (the Kafka jars, and Spark's Kafka connector when
    pyspark is installed), without starting anything."""
    from fraudstream.stack.kafka import ensure_jars, require_java
    from fraudstream.stack.spark import connector_jars, pyspark_version

    settings = settings_of(ctx)
    require_java(settings.kafka.java)
    if settings.kafka.managed:
        with err.status(f"resolving Apache Kafka {settings.kafka.version} from Maven Central…"):
            libs = ensure_jars(settings)
        out.print(f"Kafka {settings.kafka.version} jars ready in {libs}")
    else:
        out.print("Kafka is external (kafka.bootstrap_servers): no broker jars needed")
    try:
        version = pyspark_version()
    except ServiceError:
        out.print("pyspark is not installed: the Spark engine is unavailable (the local one is)")
        return
    with err.status(f"resolving Spark {version}'s Kafka connector from Maven Central…"):
        jars = connector_jars(settings)
    out.print(f"Spark {version} Kafka connector ready ({len(jars)} jars)")


def init(ctx: typer.Context) -> None:
    """Prepare the configured Kafka and PostgreSQL for the pipeline, start nothing, and exit:
    the topics, the database schema, the engines', the dashboard's and the decision API's
    database users (the managed server's, or those engine.database_url,
    dashboard.database_url and api.database_url name) and a
    first model if none exists. What `up` does before it starts the engine; the Docker
    Compose `init` service."""
    import psycopg

    from fraudstream.stack import UpReport

    settings = settings_of(ctx)
    stack = stack_of(ctx)
    password = stack.dashboard_role_password(warn=err.print)
    api_password = stack.api_role_password(warn=err.print)
    engine_password = stack.engine_role_password(warn=err.print)
    with err.status("preparing fraudstream…") as status:
        try:
            report = stack.prepare(
                UpReport(), lambda message: status.update(message + "…"),
                dashboard_password=password, api_password=api_password,
                engine_password=engine_password,
            )  # fmt: skip
        except ServiceError as error:
            hint = " (start it with `fraudstream up`)" if settings.kafka.managed else ""
            fail(f"{error}{hint}")
        except psycopg.OperationalError as error:
            fail(f"cannot reach PostgreSQL: {str(error).strip().splitlines()[0]}")
    topics, applied = report.topics_created, report.migrations_applied
    out.print(f"topics: created {', '.join(topics)}" if topics else "topics: all exist")
    out.print(
        f"database schema migrated to version {max(applied)}" if applied else "schema: current"
    )
    if password is not None:
        out.print("dashboard database user: ready")
    if api_password is not None:
        out.print("API database user: ready")
    if engine_password is not None:
        out.print("engine database user: ready")
    version = report.model_trained
    out.print(
        f"trained and promoted a first model, {version}" if version else "model: one is current"
    )
    _first_admin(settings)


def _first_admin(settings: Settings) -> None:
    """With DASHBOARD_ADMIN_PASSWORD in the environment and no dashboard user yet, the user
    `admin` (how a container deployment gets its first sign-in; later users are created by it,
    on the Users page)."""
    import os

    from fraudstream.clock import SystemClock
    from fraudstream.store.db import connect
    from fraudstream.store.users import UserError, create_user, user_count

    password = os.environ.get(FIRST_ADMIN_PASSWORD)
    if password is None:
        return
    with connect(settings, autocommit=True) as conn:
        if user_count(conn):
            out.print("dashboard users: exist")
            return
        try:
            create_user(conn, "admin", "admin", password, by="init", at=SystemClock().now())
        except UserError as error:
            fail(f"{FIRST_ADMIN_PASSWORD}: {error}", 2)
    out.print("dashboard user 'admin' created")


FIRST_ADMIN_PASSWORD = "DASHBOARD_ADMIN_PASSWORD"  # noqa: S105 (the variable's name)


def health(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="kafka, postgres, engine, dashboard or api.")],
    max_age: Annotated[
        float | None,
        typer.Option(
            help="engine: the oldest status report that counts, in seconds (default: three "
            "engine.status_interval_s, at least 30)."
        ),
    ] = None,
) -> None:
    """Exit 0 when SERVICE does its job as seen from here (container health checks): the
    broker or database answers, an engine of this host reported its status recently, the
    dashboard or the decision API answers its health endpoint."""
    from fraudstream.stack.health import SERVICES, probe

    if service not in SERVICES:
        fail(f"unknown service {service!r}: choose from {', '.join(SERVICES)}", 2)
    result = probe(settings_of(ctx), service, max_age_s=max_age)
    if not result.ok:
        fail(result.detail)
    out.print(result.detail, highlight=False)
