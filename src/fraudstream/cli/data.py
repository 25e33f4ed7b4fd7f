"""Data into the system: simulate (live to Kafka, or a history file), replay a dataset, and
the schema of the records."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fraudstream.cli._options import err, fail, progress_bar, settings_of, stop_on_signals
from fraudstream.config import Settings

if TYPE_CHECKING:
    from fraudstream.simulator.generator import SimulationParams


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
            help="Live: start a new stream (the traffic from its beginning, transaction ids in "
            "a namespace of their own) instead of continuing where the last run with the same "
            "settings stopped; later runs continue the new one."
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

    settings = settings_of(ctx)
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


def _simulate_history(params: SimulationParams, out: Path) -> None:
    from fraudstream.simulator.history import simulate_history

    started = time.monotonic()
    with progress_bar() as progress:
        task = progress.add_task("simulating days", total=params.days)
        summary = simulate_history(params, out, on_days=lambda days: progress.advance(task, days))
    seconds = time.monotonic() - started
    rows, frauds = summary.rows, summary.frauds
    mix = ", ".join(f"{name} {number:,}" for name, number in sorted(summary.scenarios.items()))
    typer.echo(
        f"wrote {rows:,} transactions over {params.days} days to {out} in {seconds:.1f} s "
        f"({rows / seconds:,.0f} tx/s)"
    )
    typer.echo(f"fraud rate {frauds / max(rows, 1):.3%} ({frauds:,} frauds: {mix})")


def _simulate_live(
    settings: Settings, params: SimulationParams, rate: float, duration: str | None,
    count: int | None, accelerated: bool, from_start: bool,
) -> None:  # fmt: skip
    from fraudstream.clock import SystemClock
    from fraudstream.simulator.publish import Publisher, simulate_live
    from fraudstream.simulator.resume import start_live
    from fraudstream.telemetry import serve_metrics

    stop = stop_on_signals()
    publisher = Publisher(settings.kafka)
    limit = f"{count:,} transactions" if count else (duration or "ever")
    live_rate = (settings.simulator.live_rate or None) if accelerated else None
    then = f", then {live_rate:,.0f} tx/s once at the present" if live_rate else ""
    err.print(
        f"sending {rate:,.0f} tx/s{then} to {settings.kafka.bootstrap} for {limit} "
        "(Ctrl-C stops cleanly)"
    )
    url = serve_metrics(settings.metrics, "simulator")
    if url:
        err.print(f"metrics on {url}")
    start = start_live(settings.state_dir, params, accelerated, from_start=from_start)
    ids = f"ids {params.live(start.stream).id_prefix}…"
    if start.checkpoint is None:
        err.print(
            f"a simulator with the same settings is running: this run sends a new stream "
            f"({ids}), which later runs will not continue"
        )
    elif start.resume is not None:
        err.print(
            f"continuing the stream after its first {start.resume.sent:,} transactions ({ids})"
        )
    else:
        err.print(f"a new stream ({ids})")
    report = simulate_live(
        publisher, params, rate=rate, clock=SystemClock(), count=count,
        duration_s=_duration_seconds(duration) if duration else None, accelerated=accelerated,
        stop=stop, resume=start.resume, checkpoint=start.checkpoint, stream=start.stream,
        live_rate=live_rate,
    )  # fmt: skip
    deviation = (report.achieved_rate - rate) / rate
    typer.echo(
        f"sent {report.sent:,} transactions in {report.seconds:.1f} s: "
        f"achieved {report.achieved_rate:,.0f} "
        f"tx/s for a target of {rate:,.0f} ({deviation:+.2%}); {report.frauds:,} frauds, "
        f"{report.labels_sent:,} labels; all delivered"
    )


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
    """Stream a dataset into Kafka (card numbers tokenised on the way in), with its own
    transaction ids. A Handbook or Sparkov/Kaggle file carries no report times: each fraud's
    label is reported simulator.label_delay_days (7) after its transaction (the Handbook's
    assumption) and sent in time order among the transactions, a week of them later.
    Replaying a file again sends the same transactions again: the engine
    dead-letters each as a replay (reason "replay: tx_id … already processed with identical
    content") and changes nothing."""
    from fraudstream.clock import SystemClock
    from fraudstream.simulator.adapters import DatasetError, load_configured_dataset
    from fraudstream.simulator.publish import Publisher
    from fraudstream.simulator.publish import replay as replay_dataset

    settings = settings_of(ctx)
    try:
        with err.status(f"reading {file}…"):
            dataset = load_configured_dataset(file, settings, file_format=file_format)
    except (DatasetError, ValueError) as error:
        fail(str(error), 2)
    for bad in dataset.bad_rows[:show_bad]:
        err.print(f"skipped {bad}", markup=False, highlight=False)
    if len(dataset.bad_rows) > show_bad:
        err.print(f"… and {len(dataset.bad_rows) - show_bad} more problems")
    stop = stop_on_signals()
    report = replay_dataset(
        Publisher(settings.kafka), dataset, clock=SystemClock(), speed=speed, stop=stop
    )
    typer.echo(
        f"{dataset.format}: read {dataset.rows_read:,} rows, skipped {dataset.rows_skipped:,} bad; "
        f"sent {report.transactions:,} transactions and {report.labels:,} labels in "
        f"{report.seconds:.1f} s" + (" (stopped early)" if report.stopped_early else "")
    )


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
        fail(f"unknown record {record!r}: choose from transaction, label", 2)
    typer.echo(json.dumps(json_schema(records[record]), indent=2, sort_keys=True))
