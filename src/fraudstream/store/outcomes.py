"""Labels in, terminal activity out: what the engines read and write besides predictions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import psycopg

from fraudstream.features import TerminalActivity
from fraudstream.features.definitions import KNOWN_FRAUD_WINDOW, TERMINAL_DELAY, TERMINAL_WINDOWS
from fraudstream.schema import Label

__all__ = ["load_terminal_activity", "store_labels"]

_LOOKBACK_DAYS = (
    TERMINAL_DELAY.days + max(w.days for w in (*TERMINAL_WINDOWS, KNOWN_FRAUD_WINDOW)) + 1
)


def store_labels(conn: psycopg.Connection[Any], labels: list[Label]) -> int:
    """Insert labels idempotently (one per transaction and source); returns how many were new."""
    if not labels:
        return 0
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO labels (tx_id, source, is_fraud, reported_at) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (tx_id, source) DO NOTHING",
            [(label.tx_id, label.source, label.is_fraud, label.reported_at) for label in labels],
        )
        return max(cursor.rowcount, 0)


def load_terminal_activity(conn: psycopg.Connection[Any], day: np.datetime64) -> TerminalActivity:
    """What the terminal table of ``day`` needs: daily counts before it and frauds reported by
    its midnight (joined to the stored predictions for their terminal and time)."""
    day_d: Any = np.asarray(day).astype("datetime64[D]")[()]
    first = (day_d - _LOOKBACK_DAYS).astype(object)
    last = day_d.astype(object)
    activity = TerminalActivity()
    counts = conn.execute(
        "SELECT terminal_id, day, tx_count FROM terminal_daily WHERE day >= %s AND day < %s",
        (first, last),
    ).fetchall()
    if counts:
        terminals, days, numbers = zip(*counts, strict=True)
        activity.add_daily_counts(
            np.array(terminals, dtype=object),
            np.array(days, dtype="datetime64[D]"),
            np.array(numbers),
        )
    frauds = conn.execute(
        "SELECT p.terminal_id, p.event_time, min(l.reported_at) FROM labels l "
        "JOIN fraud_predictions p USING (tx_id) "
        "WHERE l.is_fraud AND l.reported_at <= %s AND p.event_time >= %s AND p.event_time < %s "
        "GROUP BY p.tx_id, p.terminal_id, p.event_time",
        (last, first, last),
    ).fetchall()
    if frauds:
        terminals, times, reported = zip(*frauds, strict=True)
        activity.add_frauds(pd.Series(terminals), pd.Series(times), pd.Series(reported))
    return activity
