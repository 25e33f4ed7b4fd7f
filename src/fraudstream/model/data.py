"""Training data: transactions with their known outcomes, from a file or the database."""

from __future__ import annotations

import pandas as pd

from fraudstream.simulator.adapters import Dataset

__all__ = ["frauds_for_features", "from_dataset", "labelled_frame"]


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
