"""Training and evaluation on time-ordered folds, threshold choice, the model's metadata.

Features are computed by replaying the history through the streaming feature code; the
Handbook's protocol (see ``protocol.py``) picks hyper-parameters on validation folds and
reports the mean over test folds. The model that is kept is the one trained on the latest test
fold's training week, whose test week also sets the decision thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from fraudstream.features import FEATURE_NAMES, FEATURES_VERSION
from fraudstream.features.terminal import terminal_columns
from fraudstream.model.backends import backend
from fraudstream.model.metrics import auc_roc, average_precision, card_precision_at_k
from fraudstream.model.profile import FeatureProfile
from fraudstream.model.protocol import Fold, Protocol, split

__all__ = [
    "FIRST_MODEL_PARAMS",
    "GRIDS",
    "HANDBOOK_BASELINES",
    "FoldScores",
    "TrainingResult",
    "choose_thresholds",
    "evaluate_folds",
    "evaluate_settings",
    "train",
]

# Chapter 5 of the Fraud Detection Handbook, test folds, best-on-validation.
HANDBOOK_BASELINES = {
    "XGBoost (Handbook)": (0.872, 0.687, 0.303),
    "random forest (Handbook)": (0.870, 0.678, 0.299),
    "logistic regression (Handbook)": (0.868, 0.623, 0.297),
}

GRIDS: dict[str, list[dict[str, Any]]] = {
    "lightgbm": [
        {
            "n_estimators": 200,
            "learning_rate": 0.05,
            "num_leaves": leaves,
            "min_child_samples": child,
        }
        for leaves in (15, 63)
        for child in (20, 100)
    ],
    # Exact split finding: +2.3 points of AP over `hist` on the Handbook preset with labels
    # 7 days late, for 4x the training time (docs/model.md, levers).
    "xgboost": [
        {
            "n_estimators": 200,
            "learning_rate": 0.05,
            "max_depth": depth,
            "min_child_weight": weight,
            "tree_method": "exact",
        }
        for depth in (3, 6)
        for weight in (1, 5)
    ],
}


FIRST_MODEL_PARAMS: dict[str, dict[str, Any]] = {
    # The search's choice on the Handbook preset (docs/model.md): what `up` trains its first
    # model with, without a search of its own.
    "xgboost": {
        "n_estimators": 200, "learning_rate": 0.05, "max_depth": 6, "min_child_weight": 5,
    },
    "lightgbm": {
        "n_estimators": 200, "learning_rate": 0.05, "num_leaves": 63, "min_child_samples": 100,
    },
}  # fmt: skip


@dataclass(frozen=True)
class FoldScores:
    auc_roc: float
    average_precision: float
    card_precision_at_k: float

    @staticmethod
    def mean(scores: list[FoldScores]) -> FoldScores:
        values = np.array([[s.auc_roc, s.average_precision, s.card_precision_at_k] for s in scores])
        return FoldScores(*(float(v) for v in np.nanmean(values, axis=0)))

    def as_dict(self) -> dict[str, float]:
        return {
            "auc_roc": round(self.auc_roc, 4),
            "average_precision": round(self.average_precision, 4),
            "card_precision_at_k": round(self.card_precision_at_k, 4),
        }


@dataclass
class TrainingResult:
    model: Any
    metadata: dict[str, Any]
    validation: dict[str, FoldScores] = field(default_factory=dict)  # per parameter set
    test: FoldScores | None = None


_TERMINAL_COLUMNS = np.array([FEATURE_NAMES.index(name) for name in terminal_columns()])
_AMOUNT = FEATURE_NAMES.index("amount")
_CARD_ONES = np.array(
    [i for i, name in enumerate(FEATURE_NAMES)
     if name.startswith(("card_tx_count_", "card_distinct_terminals_"))]
)  # fmt: skip
_CARD_MEANS = np.array(
    [i for i, name in enumerate(FEATURE_NAMES) if name.startswith("card_amount_mean_")]
)
_CARD_SINCE_PREVIOUS = np.array(
    [
        FEATURE_NAMES.index(name)
        for name in (
            "card_amount_ratio_30d", "card_seconds_since_prev", "card_terminal_distance",
            "card_terminal_speed",
        )
    ]
)  # fmt: skip


def as_first_of_card(rows: np.ndarray) -> np.ndarray:
    """Feature rows as they would be for their card's first transaction: one transaction in
    every window, at one terminal, the mean its own amount, nothing before it to compare
    with (missing); the calendar, amount, home distance and terminal columns unchanged."""
    first: np.ndarray = rows.copy()
    first[:, _CARD_ONES] = 1.0
    first[:, _CARD_MEANS] = rows[:, [_AMOUNT]]
    first[:, _CARD_SINCE_PREVIOUS] = np.nan
    return first


def with_newcomers(
    features: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None,
    share: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Training rows and, appended, a ``share`` of them drawn at random as their card's first
    transaction, half of those also at a terminal with no past (its columns zeros). The
    training window of a history starts weeks in, when every card and terminal has a past:
    a model trained without these rows has never seen a new card, and sent most new cards'
    first transactions to review (docs/model.md, "new cards and terminals"). The copies keep
    their labels: with no past, what is left to learn from is the rest of the row."""
    if share <= 0 or not len(features):
        return features, labels, weights
    rng = np.random.default_rng(seed)
    count = max(1, round(share * len(features)))
    drawn = np.sort(rng.choice(len(features), size=count, replace=False))
    copies = as_first_of_card(features[drawn])
    copies[count // 2 :, _TERMINAL_COLUMNS] = 0.0
    return (
        np.concatenate([features, copies]),
        np.concatenate([labels, labels[drawn]]),
        None if weights is None else np.concatenate([weights, weights[drawn]]),
    )


def _fold_scores(
    frame: pd.DataFrame, mask: np.ndarray, scores: np.ndarray, k: int
) -> tuple[FoldScores, pd.DataFrame]:
    rows = pd.DataFrame(
        {
            "day": frame.loc[mask, "event_time"].dt.floor("D").to_numpy(),
            "card_id": frame.loc[mask, "card_id"].to_numpy(),
            "is_fraud": frame.loc[mask, "is_fraud"].to_numpy(dtype=bool),
            "score": scores,
        }
    )
    labels = rows["is_fraud"].to_numpy()
    result = FoldScores(
        auc_roc(labels, scores), average_precision(labels, scores), card_precision_at_k(rows, k)
    )
    return result, rows


def evaluate_folds(
    frame: pd.DataFrame,
    features: np.ndarray,
    folds: list[Fold],
    backend_name: str,
    params: dict[str, Any],
    *,
    k: int = 100,
    seed: int = 0,
    weights: np.ndarray | None = None,
    newcomers: float = 0.0,
) -> tuple[FoldScores, list[tuple[Any, pd.DataFrame]]]:
    """Train on each fold's training week, score its test week; mean scores and the models.
    ``weights``: per row, for training (``selective_label_weights``); ``newcomers``: the share
    of training rows also shown as a new card's, or at a new terminal (``with_newcomers``;
    never the test rows)."""
    engine = backend(backend_name)
    labels = frame["is_fraud"].to_numpy(dtype=bool)
    scores, fitted = [], []
    for fold in folds:
        train_mask, test_mask = split(frame, fold)
        if labels[train_mask].sum() == 0 or test_mask.sum() == 0:
            raise ValueError(
                f"fold {fold.describe()} has no frauds to learn from or nothing to test"
            )
        x, y, weight = with_newcomers(
            features[train_mask], labels[train_mask].astype(float),
            None if weights is None else weights[train_mask], newcomers, seed,
        )  # fmt: skip
        model = engine.fit(x, y, params, seed, weight)
        fold_scores, rows = _fold_scores(
            frame, test_mask, engine.predict(model, features[test_mask]), k
        )
        scores.append(fold_scores)
        fitted.append((model, rows))
    return FoldScores.mean(scores), fitted


def evaluate_settings(
    frame: pd.DataFrame, features: pd.DataFrame, metadata: dict[str, Any], *, k: int = 100
) -> tuple[FoldScores, list[Fold]]:
    """A stored model's settings (its ``metadata``: backend, hyper-parameters, seed, share of
    newcomer rows) trained and tested on each test fold of ``frame`` (the Handbook's
    protocol): the mean scores and the folds."""
    folds = Protocol.for_history(frame["event_time"].min()).test_folds()
    matrix = features[list(FEATURE_NAMES)].to_numpy(dtype=float)
    scores, _ = evaluate_folds(
        frame, matrix, folds, metadata["backend"], metadata["params"], k=k,
        seed=metadata["seed"], newcomers=metadata.get("newcomers", 0.0),
    )  # fmt: skip
    return scores, folds


def choose_thresholds(
    rows: pd.DataFrame, *, cards_per_day: int, decline_precision: float
) -> dict[str, float]:
    """Review threshold: the score at which, on average, ``cards_per_day`` cards a day reach
    review (the analysts' budget). Decline threshold: the lowest score whose transactions are
    fraud with at least ``decline_precision`` (never below the review threshold)."""
    per_day = rows.groupby(["day", "card_id"])["score"].max().reset_index()
    daily_kth = per_day.groupby("day")["score"].apply(
        lambda s: np.sort(s.to_numpy())[::-1][min(cards_per_day, len(s)) - 1]
    )
    review = float(np.median(daily_kth))
    ordered = rows.sort_values("score", ascending=False, kind="mergesort")
    hits = ordered["is_fraud"].to_numpy(dtype=float)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    qualifying = np.flatnonzero(precision >= decline_precision)
    decline = float(ordered["score"].to_numpy()[qualifying[-1]]) if len(qualifying) else 1.0
    return {
        "review": review,
        "decline": max(decline, review),
        "review_cards_per_day": cards_per_day,
        "decline_precision": decline_precision,
    }


def train(
    frame: pd.DataFrame,
    features: pd.DataFrame,
    *,
    backend_name: str = "lightgbm",
    protocol: Protocol | None = None,
    grid: list[dict[str, Any]] | None = None,
    k: int = 100,
    cards_per_day: int = 100,
    decline_precision: float = 0.9,
    seed: int = 0,
    created_at: datetime,
    source: str,
    progress: Callable[[str], None] = lambda _message: None,
    weights: np.ndarray | None = None,
    newcomers: float = 0.0,
) -> TrainingResult:
    """Choose hyper-parameters on validation folds, report test folds, keep the latest model."""
    protocol = protocol or Protocol.for_history(frame["event_time"].min())
    matrix = features[list(FEATURE_NAMES)].to_numpy(dtype=float)
    candidates = grid or GRIDS[backend_name]
    validation: dict[str, FoldScores] = {}
    best: tuple[float, dict[str, Any]] | None = None
    if len(candidates) == 1:  # nothing to choose: no validation folds to train
        best = (math.nan, candidates[0])
    for number, params in enumerate(candidates if len(candidates) > 1 else [], start=1):
        progress(f"validating {number}/{len(candidates)}: {_key(params)}")
        mean, _ = evaluate_folds(
            frame,
            matrix,
            protocol.validation_folds(),
            backend_name,
            params,
            k=k,
            seed=seed,
            weights=weights,
            newcomers=newcomers,
        )
        validation[_key(params)] = mean
        if best is None or mean.average_precision > best[0]:
            best = (mean.average_precision, params)
    assert best is not None
    chosen = best[1]
    progress(f"testing on {len(protocol.test_folds())} folds: {_key(chosen)}")
    test, fitted = evaluate_folds(
        frame,
        matrix,
        protocol.test_folds(),
        backend_name,
        chosen,
        k=k,
        seed=seed,
        weights=weights,
        newcomers=newcomers,
    )
    latest_model, latest_rows = fitted[0]
    latest = protocol.test_folds()[0]
    thresholds = choose_thresholds(
        latest_rows, cards_per_day=cards_per_day, decline_precision=decline_precision
    )
    in_window, _ = split(frame, latest)
    profile = FeatureProfile.of_training(
        features.loc[in_window],
        backend(backend_name).predict(latest_model, matrix[in_window]),
    )
    metadata = {
        "backend": backend_name,
        "params": chosen,
        "seed": seed,
        "features": list(FEATURE_NAMES),
        "features_version": FEATURES_VERSION,
        "training_window": {
            "start": latest.train_start.isoformat(),
            "days": latest.train_days,
            "delay_days": latest.delay_days,
            "test_start": latest.test_start.isoformat(),
            "test_days": latest.test_days,
        },
        "protocol": {
            "name": "Fraud Detection Handbook ch. 5 (7 d train, 7 d delay, 7 d test, 4 folds)",
            "validation_folds": [f.describe() for f in protocol.validation_folds()],
            "test_folds": [f.describe() for f in protocol.test_folds()],
            "selected_by": (
                "average precision on validation folds"
                if len(candidates) > 1
                else "given (no selection): " + _key(chosen)
            ),
        },
        "metrics": {"test": test.as_dict(), "k": k},
        "thresholds": thresholds,
        "profile": profile.as_dict(),
        "rows": len(frame),
        "weighted": None if weights is None else "selective labels (explored declines)",
        "newcomers": newcomers,
        "frauds": int(frame["is_fraud"].sum()),
        "source": source,
        "created_at": created_at.isoformat(),
    }
    return TrainingResult(model=latest_model, metadata=metadata, validation=validation, test=test)


def _key(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
