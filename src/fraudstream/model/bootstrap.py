"""A first model for a new installation, trained on simulated history, so `up` works at once."""

from __future__ import annotations

from collections.abc import Callable

from fraudstream.clock import Clock
from fraudstream.config import Settings
from fraudstream.features import history_features
from fraudstream.model.data import frauds_for_features, labelled_frame
from fraudstream.model.registry import Registry
from fraudstream.model.train import train
from fraudstream.simulator.generator import generate_blocks, preset
from fraudstream.simulator.history import labels_from_history, write_history

__all__ = ["ensure_model"]


def ensure_model(settings: Settings, clock: Clock, progress: Callable[[str], None]) -> str | None:
    """Train and promote a model when the registry has no current one; returns its version."""
    registry = Registry(settings.models_dir)
    if registry.current() is not None:
        return None
    params = preset(
        settings.simulator.preset,
        n_customers=settings.model.bootstrap_customers,
        n_terminals=2 * settings.model.bootstrap_customers,
        days=settings.model.bootstrap_days,
        seed=settings.simulator.seed,
    )
    path = settings.state_dir / "data" / "bootstrap-history.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    progress(f"simulating {params.days} days of history for a first model")
    write_history(generate_blocks(params), path, params)
    import pandas as pd

    history = pd.read_parquet(path)
    labels = labels_from_history(history)
    frame = labelled_frame(history.drop(columns=["is_fraud"]), labels)
    progress("computing features for the first model")
    features = history_features(frame, frauds_for_features(frame, labels))
    progress("training the first model")
    result = train(
        frame, features, backend_name=settings.model.backend,
        cards_per_day=settings.model.review_cards_per_day,
        decline_precision=settings.model.decline_precision, seed=settings.model.seed,
        created_at=clock.now(), source=f"bootstrap: {path.name}",
    )  # fmt: skip
    version = registry.save(result.model, result.metadata)
    registry.promote(version)
    return version
