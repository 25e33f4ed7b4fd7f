"""Stage benchmarks that need no services: generation, features, scoring.

Each measurement is repeated and reported as a median; CPU-bound stages are pinned to one core
so figures are comparable across machines with different core counts.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone

import pandas as pd

from fraudstream.features import FeatureComputer, history_features
from fraudstream.model.data import frauds_for_features, labelled_frame
from fraudstream.model.registry import ModelArtifact
from fraudstream.model.scoring import Scorer
from fraudstream.model.train import train
from fraudstream.simulator.generator import generate, preset
from fraudstream.simulator.history import labels_from_history

__all__ = ["Result", "feature_and_scoring", "generation", "one_core"]


@dataclass(frozen=True)
class Result:
    name: str
    value: float
    unit: str
    runs: list[float]
    note: str = ""


@contextmanager
def one_core() -> Iterator[None]:
    """Run on a single CPU (and single-threaded native libraries) while measuring."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _median(runs: list[float]) -> float:
    return float(statistics.median(runs))


def generation(days: int, repeats: int) -> Result:
    params = preset("default", days=days)
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        frame = generate(params)
        runs.append(len(frame) / (time.perf_counter() - started))
    return Result("simulator: history generation (default preset)", _median(runs), "tx/s", runs,
                  f"{len(frame):,} transactions over {days} days")  # fmt: skip


def _history(days: int, customers: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    history = generate(
        preset("default", days=days, n_customers=customers, n_terminals=2 * customers)
    )
    labels = labels_from_history(history)
    frame = labelled_frame(history.drop(columns=["is_fraud"]), labels)
    return frame, frauds_for_features(frame, labels)


def bench_model(frame: pd.DataFrame, frauds: pd.DataFrame) -> Scorer:
    """A small model trained on the benchmark history (speed does not depend on its quality)."""
    features = history_features(frame, frauds)
    result = train(
        frame, features, backend_name="xgboost", grid=[{"n_estimators": 200, "max_depth": 6}],
        created_at=datetime(2026, 1, 1, tzinfo=timezone.utc), source="bench",
    )  # fmt: skip
    artifact = ModelArtifact(version="bench", metadata=result.metadata, model=result.model)
    artifact.model.set_param({"nthread": 1})
    return Scorer(artifact)


def feature_and_scoring(
    batch_size: int = 1_000, warm_days: int = 30, measured_batches: int = 200, repeats: int = 3,
    customers: int = 5_000,
    progress: Callable[[str], None] = lambda _m: None,
) -> list[Result]:  # fmt: skip
    """Rows/s of features alone, scoring alone, and both, one core, batches of ``batch_size``."""
    progress("generating a history and training a model for the scoring benchmark")
    frame, frauds = _history(160, customers)
    scorer = bench_model(frame, frauds)
    warm = frame[frame["event_time"] < frame["event_time"].min() + pd.Timedelta(days=warm_days)]
    rest = frame.iloc[len(warm) : len(warm) + batch_size * measured_batches]
    batches = [rest.iloc[i : i + batch_size] for i in range(0, len(rest), batch_size)]
    feature_runs, scoring_runs, both_runs = [], [], []
    with one_core():
        for attempt in range(repeats):
            progress(f"features + scoring, run {attempt + 1} of {repeats}")
            computer = FeatureComputer()
            computer.activity.add_transactions(frame["terminal_id"], frame["event_time"])
            computer.activity.add_frauds(
                frauds["terminal_id"], frauds["event_time"], frauds["reported_at"]
            )
            computer.compute(warm)
            feature_time = scoring_time = 0.0
            for batch in batches:
                started = time.perf_counter()
                features = computer.compute(batch)
                middle = time.perf_counter()
                scorer.score(features)
                feature_time += middle - started
                scoring_time += time.perf_counter() - middle
            rows = sum(len(b) for b in batches)
            feature_runs.append(rows / feature_time)
            scoring_runs.append(rows / scoring_time)
            both_runs.append(rows / (feature_time + scoring_time))
    note = f"batches of {batch_size:,}, {len(batches)} batches, state warmed with {warm_days} days"
    return [
        Result("features (one core)", _median(feature_runs), "rows/s", feature_runs, note),
        Result("scoring, XGBoost (one core)", _median(scoring_runs), "rows/s", scoring_runs, note),
        Result("features + scoring (one core)", _median(both_runs), "rows/s", both_runs, note),
    ]
