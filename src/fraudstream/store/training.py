"""Stored transactions and labels as training data (``fraudstream train --from-db``)."""

from __future__ import annotations

import pandas as pd
import psycopg

__all__ = ["load_labels", "load_transactions"]


def load_transactions(conn: psycopg.Connection[tuple[object, ...]]) -> pd.DataFrame:
    rows = conn.execute(
        "SELECT tx_id, event_time, card_id, terminal_id, amount::float8 "
        "FROM fraud_predictions ORDER BY event_time, tx_id"
    ).fetchall()
    frame = pd.DataFrame(rows, columns=["tx_id", "event_time", "card_id", "terminal_id", "amount"])
    frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True)
    return frame


def load_labels(conn: psycopg.Connection[tuple[object, ...]]) -> pd.DataFrame:
    rows = conn.execute("SELECT tx_id, is_fraud, reported_at, source FROM labels").fetchall()
    frame = pd.DataFrame(rows, columns=["tx_id", "is_fraud", "reported_at", "source"])
    frame["reported_at"] = pd.to_datetime(frame["reported_at"], utc=True)
    return frame
