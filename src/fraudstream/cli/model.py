"""The model's commands: train, evaluate, models (list, show, promote) and quality."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from fraudstream.cli._options import err, fail, out, progress_bar, settings_of
from fraudstream.config import Settings

if TYPE_CHECKING:
    from fraudstream.model.data import TrainingData


def _training_data(settings: Settings, history: Path | None, from_db: bool) -> TrainingData:
    """Labelled transactions and reported frauds from --history FILE or --from-db."""
    from fraudstream.model.data import training_data_from_db, training_data_from_file
    from fraudstream.simulator.adapters import DatasetError

    if (history is None) == (not from_db):
        raise typer.BadParameter("give either --history FILE or --from-db")
    if from_db:
        return training_data_from_db(settings)
    assert history is not None
    try:
        data = training_data_from_file(settings, history)
    except DatasetError as error:
        fail(str(error), 2)
    if data.rows_skipped:
        err.print(f"skipped {data.rows_skipped:,} bad rows (see `fraudstream replay` for the list)")
    return data


def _features_with_progress(data: TrainingData) -> Any:
    from fraudstream.features import history_features

    if data.features is not None:
        return data.features  # what the engines computed online, stored with each row
    with progress_bar() as progress:
        task = progress.add_task("computing features", total=len(data.frame))
        return history_features(
            data.frame, data.frauds, counted=data.counted,
            progress=lambda rows: progress.advance(task, rows),
        )  # fmt: skip


def _baseline_table(title: str, rows: dict[str, tuple[float, float, float]]) -> Table:
    from fraudstream.model.train import HANDBOOK_BASELINES

    out.print(title, highlight=False)
    table = Table("model", "AUC-ROC", "AP", "CP@100", box=None)
    for name, (auc, ap, cp) in rows.items():
        table.add_row(f"[bold]{name}[/]", f"{auc:.3f}", f"{ap:.3f}", f"{cp:.3f}")
    for name, (auc, ap, cp) in HANDBOOK_BASELINES.items():
        table.add_row(name, f"{auc:.3f}", f"{ap:.3f}", f"{cp:.3f}")
    return table


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

    settings = settings_of(ctx)
    name = backend or settings.model.backend
    if name not in ("xgboost", "lightgbm"):
        raise typer.BadParameter(f"unknown backend {name!r}: choose xgboost or lightgbm")
    data = _training_data(settings, history, from_db)
    started = time.monotonic()
    features = _features_with_progress(data)
    with err.status("training") as status:
        result = train_model(
            data.frame, features, backend_name=name, k=100,
            cards_per_day=settings.model.review_cards_per_day,
            decline_precision=settings.model.decline_precision, seed=settings.model.seed,
            created_at=SystemClock().now(), source=data.source,
            progress=lambda message: status.update(message),
            newcomers=settings.model.newcomer_share,
        )  # fmt: skip
    registry = Registry(settings.models_dir)
    version = registry.add(result.model, result.metadata, promote=promote)
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


def evaluate(
    ctx: typer.Context,
    history: Annotated[Path | None, typer.Option(help="History, Handbook or Sparkov file.")] = None,
    from_db: Annotated[
        bool, typer.Option(help="Evaluate on stored transactions and labels.")
    ] = False,
    model: Annotated[str | None, typer.Option(help="Model version whose settings to use.")] = None,
) -> None:
    """Report AUC-ROC, AP and CP@100 with the Handbook's protocol, beside its baselines."""
    from fraudstream.model.registry import Registry
    from fraudstream.model.train import evaluate_settings

    settings = settings_of(ctx)
    registry = Registry(settings.models_dir)
    version = model or registry.current()
    if version is None:
        fail("no model to take the settings from: run `fraudstream train` or pass --model", 1)
    metadata = registry.metadata(version)
    data = _training_data(settings, history, from_db)
    features = _features_with_progress(data)
    with err.status("evaluating on test folds"):
        scores, folds = evaluate_settings(data.frame, features, metadata, k=100)
    out.print(_baseline_table(
        f"{data.source}, {version} settings, mean of {len(folds)} test folds",
        {
            f"fraudstream {metadata['backend']}": (
                scores.auc_roc, scores.average_precision, scores.card_precision_at_k,
            )
        },
    ))  # fmt: skip
    for fold in folds:
        out.print(f"  fold: {fold.describe()}", highlight=False)
    settings_used = ", ".join(f"{k}={v}" for k, v in sorted(metadata["params"].items()))
    chosen = metadata.get("protocol", {}).get("selected_by", "unknown")
    out.print(
        f"  settings: {metadata['backend']} {settings_used}, seed {metadata['seed']}, "
        f"newcomer rows {metadata.get('newcomers', 0.0):.0%}; from "
        f"model {version} (trained on {metadata.get('source', '?')} at "
        f"{str(metadata.get('created_at', '?'))[:19]}; chosen by {chosen})",
        highlight=False,
    )


models_app = typer.Typer(help="List, inspect and promote model versions.", no_args_is_help=True)


@models_app.command("list")
def models_list(ctx: typer.Context) -> None:
    """Every stored model, newest first; * marks the current one."""
    from fraudstream.model.registry import Registry

    registry = Registry(settings_of(ctx).models_dir)
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

    registry = Registry(settings_of(ctx).models_dir)
    chosen = version or registry.current()
    if chosen is None:
        fail("no current model: run `fraudstream train`", 1)
    typer.echo(json.dumps(registry.metadata(chosen), indent=2, sort_keys=True))


def _actor(by: str | None) -> str:
    import getpass

    return by or getpass.getuser()


def _record(settings: Settings, action: str, version: str, **details: Any) -> None:
    """The change in ``model_events`` (the registry changed anyway: say so when the
    database is away rather than fail after the fact)."""
    from fraudstream.model.lifecycle import record_event
    from fraudstream.store.db import connect

    try:
        with connect(settings) as conn:
            record_event(conn, action, version, **details)
    except Exception as error:
        err.print(f"[yellow]not recorded in model_events (database unreachable): {error}[/]")


@models_app.command("promote")
def models_promote(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument()],
    by: Annotated[str | None, typer.Option(help="Who decides (default: your user name).")] = None,
) -> None:
    """Make VERSION the champion (running engines switch to it); recorded with who did it."""
    from fraudstream.model.registry import Registry

    settings = settings_of(ctx)
    registry = Registry(settings.models_dir)
    previous = registry.current()
    registry.promote(version)
    _record(settings, "promoted", version, actor=_actor(by), previous=previous)
    out.print(f"{version} is now the current model")


@models_app.command("challenge")
def models_challenge(
    ctx: typer.Context,
    version: Annotated[str | None, typer.Argument(help="Omit with --stop.")] = None,
    stop: Annotated[bool, typer.Option("--stop", help="Score no challenger.")] = False,
    by: Annotated[str | None, typer.Option(help="Who decides (default: your user name).")] = None,
) -> None:
    """Score VERSION in shadow beside the champion (stored, never acted on)."""
    from fraudstream.model.registry import Registry

    settings = settings_of(ctx)
    registry = Registry(settings.models_dir)
    if (version is None) != stop:
        raise typer.BadParameter("give a VERSION, or --stop")
    if stop:
        current = registry.challenger()
        registry.set_challenger(None)
        if current:
            _record(settings, "retired", current, actor=_actor(by))
        out.print("no challenger" + (f" ({current} retired)" if current else ""))
        return
    assert version is not None
    registry.set_challenger(version)
    _record(settings, "challenger", version, actor=_actor(by), previous=registry.current())
    out.print(f"{version} is scored in shadow beside {registry.current()}")


@models_app.command("gate")
def models_gate(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option(help="Say what the gate would do; change nothing.")
    ] = False,
) -> None:
    """Compare the challenger with the champion on matured days of shadow scores; promote
    it when it is better with significance (model.gate_min_days, model.gate_alpha)."""
    from fraudstream.model.lifecycle import run_gate
    from fraudstream.store.db import connect

    settings = settings_of(ctx)
    with connect(settings) as conn:
        outcome = run_gate(settings, conn, act=not dry_run)
    if outcome is None:
        fail("no challenger: `fraudstream retrain` or `fraudstream models challenge VERSION`", 1)
    challenger, result = outcome
    table = Table("", "champion", "challenger", box=None)
    table.add_row("CP@k", f"{result.champion_cp:.3f}", f"{result.challenger_cp:.3f}")
    table.add_row(
        "money recall@k", f"{result.champion_money:.3f}", f"{result.challenger_money:.3f}"
    )
    out.print(table)
    out.print(
        f"{challenger}: {result.verdict} ({result.why}; {result.days} matured day(s), "
        f"p = {result.p_value:.3f})" + (" [dry run]" if dry_run else ""),
        highlight=False,
        markup=False,
    )


def retrain(
    ctx: typer.Context,
    every_hours: Annotated[
        float | None,
        typer.Option(
            help="Keep going: retrain, then gate, this often (model.retrain_every_hours)."
        ),
    ] = None,
) -> None:
    """Train a challenger on stored transactions with matured labels; the engines score it in
    shadow until the gate (`fraudstream models gate`) or a person promotes it."""
    from fraudstream.clock import SystemClock
    from fraudstream.model.lifecycle import retrain as retrain_model
    from fraudstream.model.lifecycle import run_gate
    from fraudstream.store.db import connect

    settings = settings_of(ctx)
    every = every_hours or settings.model.retrain_every_hours
    while True:
        started = time.monotonic()
        try:
            retrained = retrain_model(
                settings, SystemClock(), progress=lambda m: err.print(f"retrain: {m}")
            )
        except ValueError as error:
            if every is None:
                fail(str(error), 1)
            err.print(f"retrain: {error}")
        else:
            test = retrained.metadata["metrics"]["test"]
            out.print(
                f"{retrained.version} trained in {time.monotonic() - started:.0f} s: AUC "
                f"{test['auc_roc']:.3f}, AP {test['average_precision']:.3f}, CP@k "
                f"{test['card_precision_at_k']:.3f} on its test folds",
                highlight=False,
            )
        if every is None:
            return
        with connect(settings) as conn:
            outcome = run_gate(settings, conn)
        if outcome is not None:
            err.print(f"gate: {outcome[1].verdict}: {outcome[1].why}")
        time.sleep(every * 3600)


def quality(ctx: typer.Context) -> None:
    """Measure model quality for every day whose labels have matured and that is not measured
    yet (what the running engine does every engine.quality_interval_s), for the dashboard."""
    from datetime import datetime, timedelta

    from fraudstream.store.db import connect
    from fraudstream.store.quality import decline_precision, refresh_quality

    settings = settings_of(ctx)
    with connect(settings) as conn:
        row = conn.execute("SELECT max(event_time) FROM fraud_predictions").fetchone()
        newest = row[0] if row else None
        if not isinstance(newest, datetime):
            fail("no predictions stored yet: nothing to measure (is the engine running?)")
        measured = refresh_quality(
            conn, newest.date(), maturity_days=settings.engine.quality_maturity_days
        )
        since = newest - timedelta(days=60)
        until = newest - timedelta(days=settings.engine.quality_maturity_days)
        declines = decline_precision(conn, since, until)
    span = f": {measured[0]} … {measured[-1]}" if measured else ""
    typer.echo(f"measured {len(measured)} day(s){span}")
    if declines.explored:
        typer.echo(
            f"decline precision (explored would-be declines, matured days): "
            f"{declines.estimate:.1%}, 95 % interval {declines.low:.1%}–{declines.high:.1%} "
            f"({declines.frauds} frauds of {declines.explored})"
        )
