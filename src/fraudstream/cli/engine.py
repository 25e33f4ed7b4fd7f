"""`fraudstream score`: a streaming engine, local or Spark, in the foreground."""

from __future__ import annotations

from typing import Annotated, Any, get_args

import typer

from fraudstream.cli._options import fail, settings_of, stop_on_signals
from fraudstream.config import EngineSettings, env_name

# The choices as the setting declares them (the registry, engines/base.py, is not imported
# until an engine is chosen: it pulls in the model libraries).
_KINDS = " | ".join(get_args(EngineSettings.model_fields["kind"].annotation))


def score(
    ctx: typer.Context,
    engine: Annotated[
        str | None,
        typer.Option(
            help=f"{_KINDS}; default: the engine.kind setting (env {env_name('engine.kind')}), "
            "local unless set."
        ),
    ] = None,
    master: Annotated[
        str | None,
        typer.Option(
            help="Spark master (local[N] or spark://host:port); default: the spark.master "
            f"setting (env {env_name('spark.master')})."
        ),
    ] = None,
    max_idle: Annotated[
        float | None, typer.Option(help="Stop after this many idle seconds (default: run on).")
    ] = None,
) -> None:
    """Score the transactions topic continuously into PostgreSQL (Ctrl-C/SIGTERM stops cleanly)."""
    import logging

    from fraudstream.clock import SystemClock
    from fraudstream.engines.base import (
        ENGINES,
        create_engine,
        tune_garbage_collector,
        tune_thread_switching,
    )

    settings = settings_of(ctx)
    kind = engine or settings.engine.kind
    if kind not in ENGINES:
        fail(f"--engine must be one of {', '.join(ENGINES)}, not {kind!r}", 2)
    options: dict[str, Any] = {}
    if master is not None:
        if kind != "spark":
            fail(f"--master is for the spark engine, not {kind}", 2)
        options["master"] = master
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = stop_on_signals()
    try:
        runner = create_engine(kind, settings, SystemClock(), stop, **options)
    except RuntimeError as error:
        # Exactly RuntimeError: an optional dependency is missing (the message says what to
        # install). Its subclasses (registry, bus, services) are reported by the CLI's main.
        if type(error) is not RuntimeError:
            raise
        fail(str(error), 2)
    from fraudstream.telemetry import serve_metrics

    serve_metrics(settings.metrics, "engine")
    tune_garbage_collector()  # this process is the engine's: settings of the whole process
    tune_thread_switching()
    stats = runner.run(max_idle_s=max_idle)
    typer.echo(
        f"scored {stats.scored:,} transactions in {stats.batches:,} batches "
        f"({stats.stored:,} new rows), rejected {stats.rejected:,}, alerts {stats.alerts:,}"
    )
