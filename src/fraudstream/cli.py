"""The ``fraudstream`` command: one sub-command per action, settings from flags, env or file."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from fraudstream import __version__
from fraudstream.bus import BusError, DeliveryError
from fraudstream.config import (
    CONFIG_FILE_ENV,
    Settings,
    SettingsError,
    env_name,
    load_settings,
    setting_paths,
)
from fraudstream.model.registry import RegistryError
from fraudstream.stack import ServiceError, Stack
from fraudstream.store.migrations import MigrationError

app = typer.Typer(
    name="fraudstream",
    help="Real-time card-fraud detection on Kafka and PostgreSQL.\n\n"
    "Every setting can also come from a FRAUDSTREAM_… environment variable or a TOML file; "
    "`fraudstream config` lists them all.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


class _Options:
    def __init__(self, config: Path | None, overrides: dict[str, str]) -> None:
        self.config = config
        self.overrides = overrides
        self._settings: Settings | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(config_file=self.config, overrides=self.overrides)
        return self._settings


def _parse_overrides(values: list[str]) -> dict[str, str]:
    overrides = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE (e.g. kafka.port=9095), got {item!r}")
        overrides[key.strip()] = value
    return overrides


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
    overrides = _parse_overrides(set_ or [])
    if state_dir is not None:
        overrides["state_dir"] = str(state_dir)
    ctx.obj = _Options(config, overrides)


def _settings(ctx: typer.Context) -> Settings:
    options: _Options = ctx.obj
    return options.settings()


def _child_env(ctx: typer.Context) -> dict[str, str]:
    """The environment for processes this command starts: its own, plus its --config and --set
    choices, so that the children see the same settings."""
    import os

    options: _Options = ctx.obj
    env = dict(os.environ)
    if options.config is not None:
        env[CONFIG_FILE_ENV] = str(options.config.absolute())
    for key, value in options.overrides.items():
        env[env_name(key)] = value
    return env


def _stack(ctx: typer.Context) -> Stack:
    """The stack, its engine, simulator and dashboard processes seeing this command's settings."""
    options: _Options = ctx.obj
    return Stack(options.settings(), child_env=_child_env(ctx))


def _print_error(message: str) -> None:
    err.print("[bold red]error:[/] ", end="")
    err.print(message, markup=False, highlight=False)


def _fail(message: str, code: int = 1) -> NoReturn:
    _print_error(message)
    raise typer.Exit(code)


@app.command()
def up(ctx: typer.Context) -> None:
    """Start the local stack detached and return when it is healthy."""
    stack = _stack(ctx)
    started = time.monotonic()
    with err.status("starting fraudstream…") as status:
        report = stack.up(progress=lambda message: status.update(message + "…"))
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
    _print_status(stack)


@app.command()
def down(
    ctx: typer.Context,
    volumes: Annotated[
        bool, typer.Option("--volumes", "-v", help="Also delete all data (broker logs, database).")
    ] = False,
) -> None:
    """Stop the local stack cleanly."""
    settings = _settings(ctx)
    stopped = _stack(ctx).down(volumes=volumes)
    out.print(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
    if volumes:
        out.print(f"deleted {settings.state_dir}")


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List each service with its state, pid, address and uptime."""
    stack = _stack(ctx)
    if as_json:
        rows = [status.__dict__ for status in stack.status()]
        out.print_json(json.dumps(rows))
        return
    _print_status(stack)


def _print_status(stack: Stack) -> None:
    table = Table("service", "state", "pid", "address", "uptime", box=None)
    colours = {"running": "green", "external": "green", "starting": "yellow"}
    for row in stack.status():
        colour = colours.get(row.state, "red")
        table.add_row(
            row.name,
            f"[{colour}]{row.state}[/]",
            str(row.pid or "-"),
            row.address,
            _duration(row.uptime_s),
        )
    out.print(table)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@app.command()
def logs(
    ctx: typer.Context,
    service: Annotated[
        str | None, typer.Argument(help="kafka, postgres, engine or simulator; all when omitted.")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    tail: Annotated[int, typer.Option("--tail", "-n", min=0, help="Lines to show first.")] = 50,
) -> None:
    """Show or follow a service's log."""
    files = _stack(ctx).log_files()
    if service is not None:
        if service not in files:
            _fail(
                f"unknown service {service!r}: "
                f"choose from {', '.join(files) or 'none (all external)'}",
                2,
            )
        files = {service: files[service]}
    prefix = len(files) > 1
    for name, path in files.items():
        for line in _last_lines(path, tail):
            typer.echo(f"{name} | {line}" if prefix else line)
    if follow:
        try:
            for name, line in _follow(files):
                typer.echo(f"{name} | {line}" if prefix else line)
        except KeyboardInterrupt:
            pass


def _last_lines(path: Path, count: int) -> list[str]:
    if count == 0 or not path.exists():
        return []
    return path.read_text(errors="replace").splitlines()[-count:]


def _follow(files: dict[str, Path]) -> Iterator[tuple[str, str]]:
    positions = {name: path.stat().st_size if path.exists() else 0 for name, path in files.items()}
    while True:
        quiet = True
        for name, path in files.items():
            if not path.exists():
                continue
            size = path.stat().st_size
            if size < positions[name]:
                positions[name] = 0  # the log was truncated or recreated
            if size > positions[name]:
                with path.open("rb") as handle:
                    handle.seek(positions[name])
                    chunk = handle.read()
                complete = chunk[: chunk.rfind(b"\n") + 1]
                positions[name] += len(complete)
                for line in complete.decode(errors="replace").splitlines():
                    quiet = False
                    yield name, line
        if quiet:
            time.sleep(0.25)


@app.command()
def doctor(ctx: typer.Context) -> None:
    """Check the prerequisites (Java 17+, Maven, free ports, disk, memory)."""
    from fraudstream.stack.doctor import run_checks

    checks = run_checks(_settings(ctx))
    for check in checks:
        mark = "[green]✓[/]" if check.ok else "[red]✗[/]"
        out.print(f"{mark} {check.name}: {check.detail}", highlight=False)
        if not check.ok and check.fix:
            out.print(f"    fix: {check.fix}", highlight=False)
    failed = [check.name for check in checks if not check.ok]
    if failed:
        _fail(f"{len(failed)} check(s) failed: {', '.join(failed)}")
    out.print("all checks passed")


@app.command()
def setup(ctx: typer.Context) -> None:
    """Fetch what the local stack needs once (the Kafka jars, and Spark's Kafka connector when
    pyspark is installed), without starting anything."""
    from fraudstream.stack.kafka import ensure_jars, require_java
    from fraudstream.stack.spark import connector_jars, pyspark_version

    settings = _settings(ctx)
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


@app.command()
def init(ctx: typer.Context) -> None:
    """Prepare the configured Kafka and PostgreSQL for the pipeline, start nothing, and exit:
    the topics, the database schema, the dashboard's database user (the managed server's, or
    the one dashboard.database_url names) and a first model if none exists. What `up` does
    before it starts the engine; the Docker Compose `init` service."""
    import psycopg

    from fraudstream.stack import UpReport

    settings = _settings(ctx)
    password = _dashboard_role_password(settings)
    with err.status("preparing fraudstream…") as status:
        try:
            report = _stack(ctx).prepare(
                UpReport(), lambda message: status.update(message + "…"),
                dashboard_password=password,
            )  # fmt: skip
        except ServiceError as error:
            hint = " (start it with `fraudstream up`)" if settings.kafka.managed else ""
            _fail(f"{error}{hint}")
        except psycopg.OperationalError as error:
            _fail(f"cannot reach PostgreSQL: {str(error).strip().splitlines()[0]}")
    topics, applied = report.topics_created, report.migrations_applied
    out.print(f"topics: created {', '.join(topics)}" if topics else "topics: all exist")
    out.print(
        f"database schema migrated to version {max(applied)}" if applied else "schema: current"
    )
    if password is not None:
        out.print("dashboard database user: ready")
    version = report.model_trained
    out.print(
        f"trained and promoted a first model, {version}" if version else "model: one is current"
    )


def _dashboard_role_password(settings: Settings) -> str | None:
    """The password to give the dashboard's own database user, when fraudstream owns it."""
    if settings.database.managed:
        from fraudstream.stack.postgres import EmbeddedPostgres

        return EmbeddedPostgres(settings).dashboard_password()
    if settings.dashboard.database_url is None:
        return None
    from psycopg.conninfo import conninfo_to_dict

    from fraudstream.store.roles import DASHBOARD_ROLE

    params = conninfo_to_dict(settings.dashboard.database_url.get_secret_value())
    if params.get("user") != DASHBOARD_ROLE or not params.get("password"):
        err.print(
            f"dashboard.database_url does not name user {DASHBOARD_ROLE} with a password: "
            "that user is yours to create"
        )
        return None
    return str(params["password"])


@app.command()
def health(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="kafka, postgres, engine or dashboard.")],
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
    dashboard answers its health endpoint."""
    from fraudstream.stack.health import SERVICES, probe

    if service not in SERVICES:
        _fail(f"unknown service {service!r}: choose from {', '.join(SERVICES)}", 2)
    result = probe(_settings(ctx), service, max_age_s=max_age)
    if not result.ok:
        _fail(result.detail)
    out.print(result.detail, highlight=False)


@app.command("config")
def show_config(ctx: typer.Context) -> None:
    """List every setting with its current value and environment variable (secrets hidden)."""
    settings = _settings(ctx)
    table = Table("setting", "value", "environment variable", box=None)
    for path in setting_paths():
        value: Any = settings
        for part in path.split("."):
            value = getattr(value, part)
        shown = "**********" if value is not None and "Secret" in type(value).__name__ else value
        table.add_row(path, str(shown), env_name(path))
    out.print(table)


def _duration_seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise typer.BadParameter(
            f"expected a duration like 90, 90s, 5m or 1h, got {text!r}"
        ) from None
    if value <= 0:
        raise typer.BadParameter(f"the duration must be positive, got {text!r}")
    return value


@app.command()
def simulate(
    ctx: typer.Context,
    out: Annotated[
        Path | None, typer.Option(help="Write a history (Parquet) instead of streaming to Kafka.")
    ] = None,
    days: Annotated[int, typer.Option(min=1, max=3650, help="Days of history (with --out).")] = 183,
    rate: Annotated[
        float | None, typer.Option(min=0.001, help="Live transactions per second (simulator.rate).")
    ] = None,
    duration: Annotated[
        str | None, typer.Option(help="Live: stop after this long (90, 90s, 5m, 1h).")
    ] = None,
    count: Annotated[int | None, typer.Option(min=1, help="Live: stop after this many.")] = None,
    accelerated: Annotated[
        bool,
        typer.Option(
            help="Live: event time runs at simulation speed, starting in the past, until it "
            "catches up with now (labels arrive)."
        ),
    ] = False,
    forever: Annotated[bool, typer.Option(help="Live: run until stopped.")] = False,
    from_start: Annotated[
        bool,
        typer.Option(
            help="Live: start the stream from its beginning instead of continuing where the "
            "last run with the same settings stopped (which would repeat its transaction ids)."
        ),
    ] = False,
    preset: Annotated[
        str | None, typer.Option(help="default | handbook (simulator.preset).")
    ] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Random seed (simulator.seed).")] = None,
    customers: Annotated[int | None, typer.Option(min=1, help="Card holders.")] = None,
    terminals: Annotated[int | None, typer.Option(min=1, help="Terminals.")] = None,
    radius: Annotated[
        float | None, typer.Option(min=0.01, help="Terminal reach around home.")
    ] = None,
) -> None:
    """Generate realistic traffic: live to Kafka, or a history file for training."""
    from fraudstream.simulator.generator import preset as make_params

    settings = _settings(ctx)
    overrides: dict[str, Any] = {"seed": seed if seed is not None else settings.simulator.seed}
    for name, value in (("n_customers", customers), ("n_terminals", terminals), ("radius", radius)):
        if value is not None:
            overrides[name] = value
    try:
        params = make_params(preset or settings.simulator.preset, **overrides)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    if out is not None:
        if rate is not None or duration is not None or count is not None:
            raise typer.BadParameter(
                "--out writes a history; --rate/--duration/--count are for live mode"
            )
        _simulate_history(replace(params, days=days), out)
        return
    if duration is None and count is None and not forever:
        raise typer.BadParameter(
            "live mode needs --duration, --count or --forever (or --out FILE for a history)"
        )
    _simulate_live(
        settings, params, rate or settings.simulator.rate, duration, count, accelerated,
        from_start,
    )  # fmt: skip


def _simulate_history(params: Any, out: Path) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from fraudstream.simulator.generator import BLOCK_DAYS, generate_blocks
    from fraudstream.simulator.history import write_history

    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    frauds = 0
    scenarios: dict[str, int] = {}
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=err,
    ) as progress:  # fmt: skip
        task = progress.add_task("simulating days", total=params.days)

        def done(block: Any) -> None:
            nonlocal frauds
            frauds += int(block["is_fraud"].sum())
            for name, number in block["scenario"].value_counts().items():
                scenarios[str(name)] = scenarios.get(str(name), 0) + int(number)
            progress.advance(task, min(BLOCK_DAYS, params.days - progress.tasks[0].completed))

        rows = write_history(generate_blocks(params), out, params, on_block=done)
    seconds = time.monotonic() - started
    mix = ", ".join(f"{name} {number:,}" for name, number in sorted(scenarios.items()))
    typer.echo(
        f"wrote {rows:,} transactions over {params.days} days to {out} in {seconds:.1f} s "
        f"({rows / seconds:,.0f} tx/s)"
    )
    typer.echo(f"fraud rate {frauds / max(rows, 1):.3%} ({frauds:,} frauds: {mix})")


def _simulate_live(
    settings: Settings, params: Any, rate: float, duration: str | None, count: int | None,
    accelerated: bool, from_start: bool,
) -> None:  # fmt: skip
    import signal
    import threading

    from fraudstream.clock import SystemClock
    from fraudstream.simulator.publish import Publisher, simulate_live
    from fraudstream.simulator.resume import ResumeFile

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    publisher = Publisher(settings.kafka)
    limit = f"{count:,} transactions" if count else (duration or "ever")
    err.print(
        f"sending {rate:,.0f} tx/s to {settings.kafka.bootstrap} for {limit} (Ctrl-C stops cleanly)"
    )
    resume_file = ResumeFile(settings.state_dir, params, accelerated)
    resume = None if from_start else resume_file.load()
    if resume is not None:
        err.print(f"continuing the stream after its first {resume.sent:,} transactions")
    report = simulate_live(
        publisher, params, rate=rate, clock=SystemClock(), count=count,
        duration_s=_duration_seconds(duration) if duration else None,
        accelerated=accelerated, stop=stop, resume=resume, checkpoint=resume_file.save,
    )  # fmt: skip
    deviation = (report.achieved_rate - rate) / rate
    typer.echo(
        f"sent {report.sent:,} transactions in {report.seconds:.1f} s: "
        f"achieved {report.achieved_rate:,.0f} "
        f"tx/s for a target of {rate:,.0f} ({deviation:+.2%}); {report.frauds:,} frauds, "
        f"{report.labels_sent:,} labels; all delivered"
    )


@app.command()
def replay(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A history, Handbook or Sparkov/Kaggle file.")],
    speed: Annotated[
        float | None,
        typer.Option(min=0.001, help="Real time × N by event time; default: as fast as possible."),
    ] = None,
    file_format: Annotated[
        str, typer.Option("--format", help="auto | history | handbook | sparkov.")
    ] = "auto",
    show_bad: Annotated[int, typer.Option(min=0, help="Bad rows to list.")] = 20,
) -> None:
    """Stream a dataset into Kafka (card numbers tokenised on the way in)."""
    import signal
    import threading
    from datetime import timedelta

    from fraudstream.clock import SystemClock
    from fraudstream.privacy import CardTokenizer
    from fraudstream.simulator.adapters import DatasetError, load_dataset
    from fraudstream.simulator.publish import Publisher
    from fraudstream.simulator.publish import replay as replay_dataset

    settings = _settings(ctx)
    key = settings.privacy.tokenizer_key()
    try:
        tokenizer = CardTokenizer(key) if key else None
        with err.status(f"reading {file}…"):
            dataset = load_dataset(
                file, tokenizer=tokenizer, file_format=file_format,
                label_delay=timedelta(days=settings.simulator.label_delay_days),
            )  # fmt: skip
    except (DatasetError, ValueError) as error:
        _fail(str(error), 2)
    for bad in dataset.bad_rows[:show_bad]:
        err.print(f"skipped {bad}", markup=False, highlight=False)
    if len(dataset.bad_rows) > show_bad:
        err.print(f"… and {len(dataset.bad_rows) - show_bad} more problems")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    report = replay_dataset(
        Publisher(settings.kafka), dataset, clock=SystemClock(), speed=speed, stop=stop
    )
    typer.echo(
        f"{dataset.format}: read {dataset.rows_read:,} rows, skipped {dataset.rows_skipped:,} bad; "
        f"sent {report.transactions:,} transactions and {report.labels:,} labels in "
        f"{report.seconds:.1f} s" + (" (stopped early)" if report.stopped_early else "")
    )


@app.command()
def schema(
    record: Annotated[str, typer.Argument(help="transaction | label")] = "transaction",
) -> None:
    """Print the JSON Schema of a canonical record."""
    from fraudstream.schema import Label, Transaction, json_schema

    records: dict[str, type[Transaction] | type[Label]] = {
        "transaction": Transaction,
        "label": Label,
    }
    if record not in records:
        _fail(f"unknown record {record!r}: choose from transaction, label", 2)
    typer.echo(json.dumps(json_schema(records[record]), indent=2, sort_keys=True))


def _training_data(settings: Settings, history: Path | None, from_db: bool) -> tuple[Any, Any, str]:
    """(labelled transactions, reported frauds, source description) for training."""
    from datetime import timedelta

    from fraudstream.model.data import frauds_for_features, from_dataset, labelled_frame
    from fraudstream.privacy import CardTokenizer
    from fraudstream.simulator.adapters import DatasetError, load_dataset

    if (history is None) == (not from_db):
        raise typer.BadParameter("give either --history FILE or --from-db")
    if from_db:
        from fraudstream.store.db import connect
        from fraudstream.store.training import load_labels, load_transactions

        with connect(settings) as conn:
            transactions, labels = load_transactions(conn), load_labels(conn)
        frame = labelled_frame(transactions, labels)
        return frame, frauds_for_features(frame, labels), "database"
    assert history is not None
    key = settings.privacy.tokenizer_key()
    try:
        dataset = load_dataset(
            history, tokenizer=CardTokenizer(key) if key else None,
            label_delay=timedelta(days=settings.simulator.label_delay_days),
        )  # fmt: skip
    except DatasetError as error:
        _fail(str(error), 2)
    if dataset.bad_rows:
        err.print(
            f"skipped {dataset.rows_skipped:,} bad rows (see `fraudstream replay` for the list)"
        )
    frame, frauds = from_dataset(dataset)
    return frame, frauds, history.name


def _features_with_progress(frame: Any, frauds: Any) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from fraudstream.features import history_features

    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=err,
    ) as progress:  # fmt: skip
        task = progress.add_task("computing features", total=len(frame))
        return history_features(frame, frauds, progress=lambda rows: progress.advance(task, rows))


def _baseline_table(title: str, rows: dict[str, tuple[float, float, float]]) -> Table:
    from fraudstream.model.train import HANDBOOK_BASELINES

    out.print(title, highlight=False)
    table = Table("model", "AUC-ROC", "AP", "CP@100", box=None)
    for name, (auc, ap, cp) in rows.items():
        table.add_row(f"[bold]{name}[/]", f"{auc:.3f}", f"{ap:.3f}", f"{cp:.3f}")
    for name, (auc, ap, cp) in HANDBOOK_BASELINES.items():
        table.add_row(name, f"{auc:.3f}", f"{ap:.3f}", f"{cp:.3f}")
    return table


@app.command()
def train(
    ctx: typer.Context,
    history: Annotated[Path | None, typer.Option(help="History, Handbook or Sparkov file.")] = None,
    from_db: Annotated[bool, typer.Option(help="Train on stored transactions and labels.")] = False,
    backend: Annotated[str | None, typer.Option(help="xgboost | lightgbm (model.backend).")] = None,
    promote: Annotated[
        bool | None, typer.Option(help="Make it the current model (default: when none is).")
    ] = None,
) -> None:
    """Train a model on time-ordered folds, store it in the registry with its metrics."""
    from fraudstream.clock import SystemClock
    from fraudstream.model.registry import Registry
    from fraudstream.model.train import train as train_model

    settings = _settings(ctx)
    name = backend or settings.model.backend
    if name not in ("xgboost", "lightgbm"):
        raise typer.BadParameter(f"unknown backend {name!r}: choose xgboost or lightgbm")
    frame, frauds, source = _training_data(settings, history, from_db)
    started = time.monotonic()
    features = _features_with_progress(frame, frauds)
    with err.status("training") as status:
        result = train_model(
            frame, features, backend_name=name, k=100,
            cards_per_day=settings.model.review_cards_per_day,
            decline_precision=settings.model.decline_precision, seed=settings.model.seed,
            created_at=SystemClock().now(), source=source,
            progress=lambda message: status.update(message),
        )  # fmt: skip
    registry = Registry(settings.models_dir)
    version = registry.save(result.model, result.metadata)
    if promote or (promote is None and registry.current() is None):
        registry.promote(version)
    assert result.test is not None
    test = result.test
    out.print(_baseline_table(
        f"{version} on test folds ({name}, {time.monotonic() - started:.0f} s)",
        {f"fraudstream {name}": (test.auc_roc, test.average_precision, test.card_precision_at_k)},
    ))  # fmt: skip
    thresholds = result.metadata["thresholds"]
    out.print(
        f"thresholds: review ≥ {thresholds['review']:.4f} "
        f"(≈{thresholds['review_cards_per_day']} cards/day), "
        f"decline ≥ {thresholds['decline']:.4f} (precision ≥ {thresholds['decline_precision']:.0%})"
    )
    current = registry.current()
    out.print(
        f"stored {version} in {settings.models_dir}" + (" (current)" if current == version else "")
    )


@app.command()
def evaluate(
    ctx: typer.Context,
    history: Annotated[Path | None, typer.Option(help="History, Handbook or Sparkov file.")] = None,
    from_db: Annotated[
        bool, typer.Option(help="Evaluate on stored transactions and labels.")
    ] = False,
    model: Annotated[str | None, typer.Option(help="Model version whose settings to use.")] = None,
) -> None:
    """Report AUC-ROC, AP and CP@100 with the Handbook's protocol, beside its baselines."""
    from fraudstream.features import FEATURE_NAMES
    from fraudstream.model.protocol import Protocol
    from fraudstream.model.registry import Registry
    from fraudstream.model.train import evaluate_folds

    settings = _settings(ctx)
    registry = Registry(settings.models_dir)
    version = model or registry.current()
    if version is None:
        _fail("no model to take the settings from: run `fraudstream train` or pass --model", 1)
    metadata = registry.metadata(version)
    frame, frauds, source = _training_data(settings, history, from_db)
    features = _features_with_progress(frame, frauds)
    protocol = Protocol.for_history(frame["event_time"].min())
    with err.status("evaluating on test folds"):
        scores, _ = evaluate_folds(
            frame, features[list(FEATURE_NAMES)].to_numpy(dtype=float), protocol.test_folds(),
            metadata["backend"], metadata["params"], k=100, seed=metadata["seed"],
        )  # fmt: skip
    out.print(_baseline_table(
        f"{source}, {version} settings, mean of {len(protocol.test_folds())} test folds",
        {
            f"fraudstream {metadata['backend']}": (
                scores.auc_roc, scores.average_precision, scores.card_precision_at_k,
            )
        },
    ))  # fmt: skip
    for fold in protocol.test_folds():
        out.print(f"  fold: {fold.describe()}", highlight=False)


models_app = typer.Typer(help="List, inspect and promote model versions.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list(ctx: typer.Context) -> None:
    """Every stored model, newest first; * marks the current one."""
    from fraudstream.model.registry import Registry

    registry = Registry(_settings(ctx).models_dir)
    current = registry.current()
    table = Table("", "version", "created", "backend", "AUC-ROC", "AP", "CP@100", box=None)
    for meta in registry.versions():
        test = meta.get("metrics", {}).get("test", {})
        figures = [
            f"{test.get(name, float('nan')):.3f}"
            for name in ("auc_roc", "average_precision", "card_precision_at_k")
        ]
        marker = "*" if meta["version"] == current else ""
        created = str(meta.get("created_at", ""))[:19]
        table.add_row(marker, meta["version"], created, meta["backend"], *figures)
    out.print(table)


@models_app.command("show")
def models_show(
    ctx: typer.Context,
    version: Annotated[str | None, typer.Argument(help="Default: current.")] = None,
) -> None:
    """A model's metadata: features, training window, metrics, thresholds, hashes."""
    from fraudstream.model.registry import Registry

    registry = Registry(_settings(ctx).models_dir)
    chosen = version or registry.current()
    if chosen is None:
        _fail("no current model: run `fraudstream train`", 1)
    typer.echo(json.dumps(registry.metadata(chosen), indent=2, sort_keys=True))


@models_app.command("promote")
def models_promote(ctx: typer.Context, version: Annotated[str, typer.Argument()]) -> None:
    """Make VERSION the current model (running engines switch to it)."""
    from fraudstream.model.registry import Registry

    registry = Registry(_settings(ctx).models_dir)
    registry.promote(version)
    out.print(f"{version} is now the current model")


@app.command()
def score(
    ctx: typer.Context,
    engine: Annotated[str, typer.Option(help="local (default) | spark.")] = "local",
    master: Annotated[
        str | None,
        typer.Option(help="Spark master (local[N] or spark://host:port); default spark.master."),
    ] = None,
    max_idle: Annotated[
        float | None, typer.Option(help="Stop after this many idle seconds (default: run on).")
    ] = None,
) -> None:
    """Score the transactions topic continuously into PostgreSQL (Ctrl-C/SIGTERM stops cleanly)."""
    import logging
    import signal
    import threading

    from fraudstream.clock import SystemClock

    if engine not in ("local", "spark"):
        _fail(f"--engine must be local or spark, not {engine!r}", 2)
    if master is not None and engine != "spark":
        _fail("--master is for --engine spark", 2)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    settings = _settings(ctx)
    if engine == "spark":
        from fraudstream.engines.spark import SparkEngine

        stats = SparkEngine(settings, SystemClock(), stop, master).run(max_idle_s=max_idle)
    else:
        from fraudstream.engines.local import LocalEngine

        stats = LocalEngine(settings, SystemClock(), stop).run(max_idle_s=max_idle)
    typer.echo(
        f"scored {stats.scored:,} transactions in {stats.batches:,} batches "
        f"({stats.stored:,} new rows), rejected {stats.rejected:,}, alerts {stats.alerts:,}"
    )


@app.command()
def quality(ctx: typer.Context) -> None:
    """Measure model quality for every day whose labels have matured and that is not measured
    yet (what the running engine does every engine.quality_interval_s), for the dashboard."""
    from datetime import datetime

    from fraudstream.store.db import connect
    from fraudstream.store.quality import refresh_quality

    settings = _settings(ctx)
    with connect(settings) as conn:
        row = conn.execute("SELECT max(event_time) FROM fraud_predictions").fetchone()
        newest = row[0] if row else None
        if not isinstance(newest, datetime):
            _fail("no predictions stored yet: nothing to measure (is the engine running?)")
        measured = refresh_quality(
            conn, newest.date(), maturity_days=settings.engine.quality_maturity_days
        )
    span = f": {measured[0]} … {measured[-1]}" if measured else ""
    typer.echo(f"measured {len(measured)} day(s){span}")


@app.command()
def dashboard(ctx: typer.Context) -> None:
    """Serve the Streamlit dashboard (Live, Review queue, Model quality, Drift, Explore, System)
    on dashboard.host:dashboard.port, 127.0.0.1:8501 by default; in the foreground until
    Ctrl-C (`up` runs it as the `dashboard` service)."""
    import os
    from importlib import resources

    settings = _settings(ctx).dashboard
    if not settings.loopback and settings.password is None:
        _fail(
            f"dashboard.host is {settings.host}, not loopback: set dashboard.password "
            f"({env_name('dashboard.password')}) so that the dashboard asks for it",
            2,
        )
    app_script = resources.files("fraudstream.dashboard").joinpath("app.py")
    argv = [
        sys.executable, "-m", "streamlit", "run", str(app_script),
        "--server.address", settings.host, "--server.port", str(settings.port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--global.developmentMode", "false", "--server.fileWatcherType", "none",
        "--client.toolbarMode", "viewer",
    ]  # fmt: skip
    err.print(f"dashboard on http://{settings.host}:{settings.port}")
    os.execvpe(sys.executable, argv, _child_env(ctx))  # noqa: S606 (signals reach Streamlit)


@app.command()
def bench(
    ctx: typer.Context,
    quick: Annotated[
        bool, typer.Option(help="Tiny sizes: proves the benchmarks run (tests).")
    ] = False,
    only: Annotated[
        str,
        typer.Option(
            help="all | stages (no services) | engine (local, end to end) | spark "
            "(the Spark engine end to end; in all when pyspark is installed) | dashboard "
            "(its queries over 10 million stored predictions) | baseline (a per-message "
            "consumer beside the local engine) | growth (more cards, more stored rows)."
        ),
    ] = "all",
    out: Annotated[Path, typer.Option(help="Report to update.")] = Path("docs/benchmarks.md"),
    profile: Annotated[
        bool | None,
        typer.Option(
            help="Sample the local engine with py-spy during its first catch-up and add the "
            "profile to the report (default: when py-spy is installed, as with the dev extra, "
            "and may attach to the engine: as root or with kernel.yama.ptrace_scope 0)."
        ),
    ] = None,
) -> None:
    """Measure the system on this machine and update the benchmark report.

    Stages (generation, features, scoring) need no services; the engine benchmarks start a
    private Kafka broker and PostgreSQL server on free ports and remove them afterwards.
    """
    from fraudstream.bench import engine as engine_bench
    from fraudstream.bench import stages
    from fraudstream.bench.report import update_section, update_text_section
    from fraudstream.clock import SystemClock

    choices = ("all", "stages", "engine", "spark", "dashboard", "baseline", "growth")
    if only not in choices:
        _fail(f"--only must be one of {', '.join(choices)}, not {only!r}", 2)
    when = SystemClock().now()
    how = "fraudstream bench" + (" --quick" if quick else "") + (f" --only {only}")
    results = []
    with err.status("benchmarking") as status:
        progress = lambda message: status.update(message)  # noqa: E731
        if only in ("all", "stages"):
            generation = stages.generation(days=7 if quick else 91, repeats=1 if quick else 3)
            model = stages.feature_and_scoring(
                measured_batches=5 if quick else 200, repeats=1 if quick else 3,
                customers=500 if quick else 5_000, progress=progress,
            )  # fmt: skip
            update_section(out, "simulator", "Simulator", [generation], when, how)
            update_section(out, "features", "Features and scoring", model, when, how)
            results += [generation, *model]
        if only in ("all", "engine"):
            if profile is None:
                from fraudstream.bench.profile import can_sample

                profile = can_sample()
            engine, sampled = engine_bench.run(
                _settings(ctx), quick=quick, progress=progress,
                profile_s=(5.0 if quick else 30.0) if profile else None,
            )  # fmt: skip
            update_section(out, "engine", "Local engine, end to end", engine, when, how)
            if sampled is not None:
                title = "Local engine profile (catch-up)"
                update_text_section(out, "profile", title, sampled.markdown(), when, how)
            results += engine
        if only == "spark" or (only == "all" and importlib.util.find_spec("pyspark")):
            settings = _settings(ctx)
            spark, _ = engine_bench.run(settings, quick=quick, progress=progress, engine="spark")
            title = f"Spark engine ({settings.spark.master}), end to end"
            update_section(out, "spark", title, spark, when, how)
            results += spark
        if only in ("all", "dashboard"):
            from fraudstream.bench import dashboard as dashboard_bench

            rows = 20_000 if quick else 10_000_000
            queries = dashboard_bench.run(
                _settings(ctx), rows=rows, repeats=3 if quick else 50, progress=progress
            )
            update_section(out, "dashboard", "Dashboard queries", queries, when, how)
            results += queries
        if only in ("all", "baseline"):
            from fraudstream.bench import baseline

            compared = baseline.run(_settings(ctx), quick=quick, progress=progress)
            title = "Baseline: one message at a time, beside the local engine"
            update_section(out, "baseline", title, compared, when, how)
            results += compared
        if only in ("all", "growth"):
            from fraudstream.bench import growth

            grown = growth.run(_settings(ctx), quick=quick, progress=progress)
            update_section(out, "growth", "Growth: cards and stored rows", grown, when, how)
            results += grown
    for result in results:
        typer.echo(f"{result.name}: {result.value:,.1f} {result.unit}  {result.note}")
    typer.echo(f"updated {out}")


def main() -> None:
    """Console-script entry point: turns known failures into one clear line and an exit code."""
    try:
        app()
    except SettingsError as error:
        _print_error(str(error))
        sys.exit(2)
    except (ServiceError, BusError, MigrationError, DeliveryError, RegistryError) as error:
        _print_error(str(error))
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
