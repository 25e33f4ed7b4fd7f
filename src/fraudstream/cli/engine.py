"""`fraudstream score`: a streaming engine, local or Spark, in the foreground."""

from __future__ import annotations

from typing import Annotated

import typer

from fraudstream.cli._options import fail, settings_of, stop_on_signals


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

    from fraudstream.clock import SystemClock

    if engine not in ("local", "spark"):
        fail(f"--engine must be local or spark, not {engine!r}", 2)
    if master is not None and engine != "spark":
        fail("--master is for --engine spark", 2)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = stop_on_signals()
    settings = settings_of(ctx)
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
