"""Training data: transactions with their known outcomes, from a file or the database."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fraudstream.features import FEATURE_NAMES
from fraudstream.simulator.adapters import Dataset, load_configured_dataset

if TYPE_CHECKING:
    from fraudstream.config import Settings

__all__ = [
    "TrainingData",
    "frauds_for_features",
    "from_dataset",
    "labelled_frame",
    "selective_label_weights",
    "training_data_from_db",
    "training_data_from_file",
]


@dataclass(frozen=True)
class TrainingData:
    frame: pd.DataFrame  # labelled transactions (``labelled_frame``)
    frauds: pd.DataFrame  # reported frauds (``frauds_for_features``)
    source: str  # where they come from, for the model's metadata
    rows_skipped: int = 0  # bad rows of the file, left out
    features: pd.DataFrame | None = None  # as stored by the engines, aligned with ``frame``
    counted: np.ndarray | None = None  # rows terminal activity counts (late ones do not)


def labelled_frame(transactions: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Transactions in event order with ``is_fraud`` from the fraud labels received for them.

    A fraud never reported counts as legitimate, as it would for the bank.
    """
    frauds = labels.loc[labels["is_fraud"].astype(bool), "tx_id"]
    frame = transactions.sort_values("event_time", kind="stable").reset_index(drop=True)
    frame["is_fraud"] = frame["tx_id"].isin(set(frauds))
    return frame


def frauds_for_features(frame: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Reported frauds with their terminal and time, as the terminal features need them."""
    fraud_labels = labels[labels["is_fraud"].astype(bool)].groupby("tx_id")["reported_at"].min()
    rows = frame[frame["tx_id"].isin(fraud_labels.index)]
    return pd.DataFrame(
        {
            "terminal_id": rows["terminal_id"].to_numpy(),
            "event_time": rows["event_time"].to_numpy(),
            "reported_at": rows["tx_id"].map(fraud_labels).to_numpy(),
        }
    )


def from_dataset(dataset: Dataset) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = labelled_frame(dataset.transactions, dataset.labels)
    return frame, frauds_for_features(frame, dataset.labels)


def training_data_from_file(settings: Settings, path: Path) -> TrainingData:
    """A history, Handbook or Sparkov file, read with the configured tokenizer and label delay
    (raises ``DatasetError`` when it cannot be used)."""
    dataset = load_configured_dataset(path, settings)
    frame, frauds = from_dataset(dataset)
    return TrainingData(frame, frauds, path.name, rows_skipped=dataset.rows_skipped)


def training_data_from_db(settings: Settings) -> TrainingData:
    """The transactions and labels stored in the database, with the feature vectors the
    engines stored for them: the model learns from exactly what it will be given. When some
    rows have none (stored before features were kept), every row's features are replayed
    under the engines' rule: late rows not counted, labels as of when they were known."""
    from fraudstream.store.db import connect
    from fraudstream.store.training import load_labels, load_transactions

    with connect(settings) as conn:
        transactions, labels = load_transactions(conn), load_labels(conn)
    frame = labelled_frame(transactions, labels)
    known = labels.assign(reported_at=labels["known_at"])
    counted = ~frame["late"].to_numpy(dtype=bool)
    frauds = frauds_for_features(frame[counted], known)
    stored = frame["features"]
    features = None
    if len(frame) and stored.notna().all():
        features = pd.DataFrame(
            np.vstack(stored.to_numpy()), columns=list(FEATURE_NAMES), index=frame.index
        )
    return TrainingData(
        frame.drop(columns=["features", "late"]), frauds, "database",
        features=features, counted=counted,
    )  # fmt: skip


def selective_label_weights(frame: pd.DataFrame, explore_share: float) -> np.ndarray | None:
    """Training weights that undo what declines hide (docs/model.md, selective labels): a
    declined transaction is never completed, so its outcome is unknown (weight 0); the
    explored would-be declines, sent to review at random with probability ``explore_share``,
    stand for all of them (weight 1 / share); the rest weigh 1. None when there was no
    exploration (nothing to reweight with)."""
    if explore_share <= 0 or "explored" not in frame or not frame["explored"].any():
        return None
    explored = frame["explored"].to_numpy(dtype=bool)
    declined = (frame["decision"] == "decline").to_numpy()
    return np.where(explored, 1.0 / explore_share, np.where(declined, 0.0, 1.0))
