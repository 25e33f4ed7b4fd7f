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


@models_app.command("promote")
def models_promote(ctx: typer.Context, version: Annotated[str, typer.Argument()]) -> None:
    """Make VERSION the current model (running engines switch to it)."""
    from fraudstream.model.registry import Registry

    registry = Registry(settings_of(ctx).models_dir)
    registry.promote(version)
    out.print(f"{version} is now the current model")


def quality(ctx: typer.Context) -> None:
    """Measure model quality for every day whose labels have matured and that is not measured
    yet (what the running engine does every engine.quality_interval_s), for the dashboard."""
    from datetime import datetime

    from fraudstream.store.db import connect
    from fraudstream.store.quality import refresh_quality

    settings = settings_of(ctx)
    with connect(settings) as conn:
        row = conn.execute("SELECT max(event_time) FROM fraud_predictions").fetchone()
        newest = row[0] if row else None
        if not isinstance(newest, datetime):
            fail("no predictions stored yet: nothing to measure (is the engine running?)")
        measured = refresh_quality(
            conn, newest.date(), maturity_days=settings.engine.quality_maturity_days
        )
    span = f": {measured[0]} … {measured[-1]}" if measured else ""
    typer.echo(f"measured {len(measured)} day(s){span}")
