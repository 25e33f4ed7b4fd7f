"""A first model for a new installation, trained on simulated history, so `up` works at once."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from fraudstream.clock import Clock
from fraudstream.config import Settings
from fraudstream.features import history_features
from fraudstream.model.data import frauds_for_features, labelled_frame
from fraudstream.model.protocol import Protocol
from fraudstream.model.registry import Registry
from fraudstream.model.train import FIRST_MODEL_PARAMS, train
from fraudstream.simulator.generator import generate_blocks, preset
from fraudstream.simulator.history import labels_from_history, write_history

__all__ = ["ensure_model", "first_model_history", "first_model_protocol"]


def first_model_history(settings: Settings, path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The simulated history the first model is trained on, written to ``path``: its
    labelled frame and its labels (``model.bootstrap_customers`` card holders, twice as many
    terminals, ``model.bootstrap_days`` days, the simulator's preset and seed)."""
    params = preset(
        settings.simulator.preset,
        n_customers=settings.model.bootstrap_customers,
        n_terminals=2 * settings.model.bootstrap_customers,
        days=settings.model.bootstrap_days,
        seed=settings.simulator.seed,
    )
    write_history(generate_blocks(params), path, params)
    history = pd.read_parquet(path)
    labels = labels_from_history(history)
    return labelled_frame(history.drop(columns=["is_fraud"]), labels), labels


def first_model_protocol(frame: pd.DataFrame) -> Protocol:
    """The first model's folds: its 4 test folds end on the history's last full day."""
    return Protocol.ending(frame["event_time"].max().normalize() - pd.Timedelta(days=1))


def ensure_model(settings: Settings, clock: Clock, progress: Callable[[str], None]) -> str | None:
    """Train and promote a model when the registry has no current one; returns its version.

    Fast by design (about a minute on 2 cores): the hyper-parameters are the ones the full
    search chose on the Handbook preset (``FIRST_MODEL_PARAMS``, docs/model.md), so only the
    four test folds are trained, and they say which quality the model reached."""
    registry = Registry(settings.models_dir)
    if registry.current() is not None:
        return None
    started = time.monotonic()

    def step(message: str) -> None:
        progress(f"first model, {time.monotonic() - started:.0f} s: {message}")

    path = settings.state_dir / "data" / "bootstrap-history.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    step(
        f"simulating {settings.model.bootstrap_days} days of history "
        f"({settings.model.bootstrap_customers:,} card holders)"
    )
    frame, labels = first_model_history(settings, path)
    step(f"computing features of {len(frame):,} transactions")
    done = [0]

    def counted(rows: int) -> None:
        before, done[0] = done[0], done[0] + rows
        if 4 * done[0] // len(frame) > 4 * before // len(frame):
            step(f"features {done[0] / len(frame):.0%}")

    features = history_features(frame, frauds_for_features(frame, labels), progress=counted)
    result = train(
        frame, features, backend_name=settings.model.backend,
        protocol=first_model_protocol(frame),
        grid=[FIRST_MODEL_PARAMS[settings.model.backend]],
        cards_per_day=settings.model.review_cards_per_day,
        decline_precision=settings.model.decline_precision, seed=settings.model.seed,
        created_at=clock.now(), source=f"bootstrap: {path.name}", progress=step,
        newcomers=settings.model.newcomer_share,
    )  # fmt: skip
    version = registry.save(result.model, result.metadata)
    registry.promote(version)
    assert result.test is not None
    test = result.test
    step(
        f"{version} promoted; on its 4 test folds AUC-ROC {test.auc_roc:.3f}, AP "
        f"{test.average_precision:.3f}, CP@{result.metadata['metrics']['k']} "
        f"{test.card_precision_at_k:.3f}"
    )
    return version
