"""Labels in, terminal activity out: what the engines read and write besides predictions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import psycopg

from fraudstream.features import TerminalActivity
from fraudstream.features.terminal import count_buckets
from fraudstream.schema import Label

__all__ = ["load_terminal_activity", "store_labels"]


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
    """What the terminal table of ``day`` needs: transaction counts per terminal (summed per
    ``count_buckets`` range) and frauds reported by its midnight (joined to the stored
    predictions for their terminal and time)."""
    edges = count_buckets(day)
    epoch_days = edges.astype(np.int64).tolist()
    first, last = edges[0].astype(object), edges[-1].astype(object)
    midnight = pd.Timestamp(np.asarray(day).astype("datetime64[D]")[()], tz="UTC").to_pydatetime()
    activity = TerminalActivity()
    counts = conn.execute(
        # Days as integers since the epoch: converting date objects one by one is slow.
        "SELECT terminal_id, (%(edges)s::int[])[width_bucket(day - DATE '1970-01-01', "
        "%(edges)s::int[])], sum(tx_count)::int8 FROM terminal_daily "
        "WHERE day >= %(first)s AND day < %(last)s GROUP BY 1, 2",
        {"edges": epoch_days, "first": first, "last": last},
    ).fetchall()
    if counts:
        terminals, days, numbers = zip(*counts, strict=True)
        activity.add_daily_counts(
            np.array(terminals, dtype=object),
            np.array(days, dtype=np.int64).astype("datetime64[D]"),
            np.array(numbers, dtype=np.int64),
        )
    frauds = conn.execute(
        "SELECT p.terminal_id, p.event_time, min(l.reported_at) FROM labels l "
        "JOIN fraud_predictions p USING (tx_id) "
        "WHERE l.is_fraud AND l.reported_at <= %s AND p.event_time >= %s AND p.event_time < %s "
        "GROUP BY p.tx_id, p.terminal_id, p.event_time",
        (midnight, first, last),
    ).fetchall()
    if frauds:
        terminals, times, reported = zip(*frauds, strict=True)
        activity.add_frauds(pd.Series(terminals), pd.Series(times), pd.Series(reported))
    return activity
