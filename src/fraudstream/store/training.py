"""Stored transactions and labels as training data (``fraudstream train --from-db``)."""

from __future__ import annotations

import pandas as pd
import psycopg

__all__ = ["load_labels", "load_transactions"]


def load_transactions(conn: psycopg.Connection[tuple[object, ...]]) -> pd.DataFrame:
    """Stored predictions as transactions, in the order the engines saw them per card (event
    time, then partition and offset), with their stored feature vectors, late flags, the
    decision taken and whether it was an explored decline."""
    rows = conn.execute(
        "SELECT tx_id, event_time, card_id, terminal_id, amount::float8, features, late, "
        "       decision, 'explore' = ANY(rule_hits) "
        "FROM fraud_predictions ORDER BY event_time, kafka_partition, kafka_offset, tx_id"
    ).fetchall()
    columns = ["tx_id", "event_time", "card_id", "terminal_id", "amount", "features", "late"]
    frame = pd.DataFrame(rows, columns=[*columns, "decision", "explored"])
    frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True)
    return frame


def load_labels(conn: psycopg.Connection[tuple[object, ...]]) -> pd.DataFrame:
    """Labels with when each was reported and when terminal features could first use it."""
    rows = conn.execute(
        "SELECT tx_id, is_fraud, reported_at, source, known_at FROM labels"
    ).fetchall()
    frame = pd.DataFrame(rows, columns=["tx_id", "is_fraud", "reported_at", "source", "known_at"])
    frame["reported_at"] = pd.to_datetime(frame["reported_at"], utc=True)
    frame["known_at"] = pd.to_datetime(frame["known_at"], utc=True)
    return frame
