"""Labels in; terminal activity, sealed terminal tables and partition progress out.

What the engines read and write besides predictions to make terminal features a pure function
of the input logs (docs/adr/0004-deterministic-terminal-tables.md).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import psycopg

from fraudstream.features import TerminalActivity, TerminalTable
from fraudstream.features.terminal import count_buckets, terminal_columns
from fraudstream.features.watermarks import NO_WATERMARK
from fraudstream.schema import Label

__all__ = [
    "add_daily_counts",
    "known_frauds",
    "load_sealed_table",
    "load_terminal_activity",
    "newest_sealed_day",
    "promise_watermarks",
    "seal_table",
    "store_labels",
    "stored_progress",
]

_EPOCH = pd.Timestamp(0, tz="UTC")


def store_labels(conn: psycopg.Connection[Any], labels: Sequence[Label]) -> int:
    """Insert labels idempotently (one per transaction and source); returns how many were new.
    Their ``known_at`` is set by the database's trigger (one rule for every writer)."""
    if not labels:
        return 0
    with conn.cursor() as cursor:
        cursor.execute(
            "INSERT INTO labels (tx_id, source, is_fraud, reported_at) "
            "SELECT * FROM unnest(%b::text[], %b::text[], %b::bool[], %b::timestamptz[]) "
            "ON CONFLICT (tx_id, source) DO NOTHING",
            [
                [label.tx_id for label in labels],
                [label.source for label in labels],
                [label.is_fraud for label in labels],
                [label.reported_at for label in labels],
            ],
        )
        return max(cursor.rowcount, 0)


def load_terminal_activity(conn: psycopg.Connection[Any], day: np.datetime64) -> TerminalActivity:
    """What the terminal table of ``day`` needs: counts of transactions that were not late per
    terminal (summed per ``count_buckets`` range) and their frauds known by its midnight."""
    edges = count_buckets(day)
    epoch_days = edges.astype(np.int64).tolist()
    first, last = edges[0].astype(object), edges[-1].astype(object)
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
    activity.add_frauds(*known_frauds(conn, day))
    return activity


def add_daily_counts(
    conn: psycopg.Connection[Any], activity: TerminalActivity, days: Sequence[np.datetime64]
) -> None:
    """The stored counts of transactions that were not late, per terminal, of each of
    ``days`` into ``activity`` (one array per day: no Python object per row but the id).
    All days are read before any is added, and added in one call: a failure adds none, and
    the terminal ids of many days are coded together (each distinct id once)."""
    terminals: list[np.ndarray] = []
    dates: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    with conn.cursor(binary=True) as cursor:
        for day in days:  # a day at a time: an index range, aggregated in memory
            row = cursor.execute(
                "SELECT array_agg(terminal_id), array_agg(tx_count) FROM terminal_daily "
                "WHERE day = %s",
                (_day(day),),
            ).fetchone()
            if row is None or row[0] is None:
                continue
            terminals.append(np.array(row[0], dtype=object))
            dates.append(np.full(len(row[0]), day, dtype="datetime64[D]"))
            counts.append(np.array(row[1], dtype=np.int64))
    if terminals:
        activity.add_daily_counts(
            np.concatenate(terminals), np.concatenate(dates), np.concatenate(counts)
        )


def known_frauds(
    conn: psycopg.Connection[Any], day: np.datetime64
) -> tuple[pd.Series, pd.Series, pd.Series]:
    """The frauds the terminal table of ``day`` may know (reported by its midnight, among
    transactions that were not late in its windows): terminal, event time, when known."""
    edges = count_buckets(day)
    first, last = edges[0].astype(object), edges[-1].astype(object)
    midnight = pd.Timestamp(np.asarray(day).astype("datetime64[D]")[()], tz="UTC").to_pydatetime()
    frauds = conn.execute(
        "SELECT p.terminal_id, p.event_time, min(l.known_at) FROM labels l "
        "JOIN fraud_predictions p USING (tx_id) "
        "WHERE l.is_fraud AND l.known_at <= %s AND NOT p.late "
        "AND p.event_time >= %s AND p.event_time < %s "
        "GROUP BY p.tx_id, p.terminal_id, p.event_time",
        (midnight, first, last),
    ).fetchall()
    terminals, times, reported = zip(*frauds, strict=True) if frauds else ((), (), ())
    return (
        pd.Series(terminals, dtype=object),
        pd.Series(pd.to_datetime(list(times), utc=True)),
        pd.Series(pd.to_datetime(list(reported), utc=True)),
    )


def _day(day: np.datetime64) -> object:
    return np.asarray(day).astype("datetime64[D]")[()].astype(object)


def load_sealed_table(conn: psycopg.Connection[Any], day: np.datetime64) -> TerminalTable | None:
    with conn.cursor(binary=True) as cursor:
        row = cursor.execute(
            "SELECT frame FROM terminal_tables WHERE day = %s", (_day(day),)
        ).fetchone()
    if row is None:
        return None
    frame = pd.read_parquet(io.BytesIO(bytes(row[0])))
    frame.index.name = None
    first: Any = np.asarray(day).astype("datetime64[D]")[()]
    return TerminalTable(day=first, frame=frame)


def newest_sealed_day(conn: psycopg.Connection[Any]) -> np.datetime64 | None:
    row = conn.execute("SELECT max(day) FROM terminal_tables").fetchone()
    return None if row is None or row[0] is None else np.datetime64(row[0], "D")


def seal_table(
    conn: psycopg.Connection[Any],
    table: TerminalTable,
    *,
    features_version: str,
    idle_partitions: list[int],
    built_by: str,
) -> tuple[TerminalTable, bool]:
    """Store ``table`` as its day's table unless another engine sealed that day first; returns
    the day's table as stored (the first one wins, so every engine uses the same), and
    whether it is this one."""
    buffer = io.BytesIO()
    table.frame.reindex(columns=terminal_columns()).to_parquet(buffer)
    inserted = conn.execute(
        "INSERT INTO terminal_tables (day, features_version, frame, terminals, idle_partitions, "
        "built_by) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (day) DO NOTHING",
        (
            _day(table.day), features_version, buffer.getvalue(), len(table.frame),
            idle_partitions, built_by,
        ),
    ).rowcount  # fmt: skip
    stored = load_sealed_table(conn, table.day)
    assert stored is not None
    return stored, inserted == 1


def stored_progress(
    conn: psycopg.Connection[Any], group: str, topic: str
) -> dict[int, tuple[int, int]]:
    """(next offset, watermark µs) per partition, as the group last committed them."""
    rows = conn.execute(
        "SELECT partition, next_offset, watermark FROM stream_checkpoints "
        "WHERE consumer_group = %s AND topic = %s",
        (group, topic),
    ).fetchall()
    return {
        int(partition): (int(offset), _micros(watermark)) for partition, offset, watermark in rows
    }


def promise_watermarks(
    conn: psycopg.Connection[Any], group: str, topic: str, promises: dict[int, tuple[int, int]]
) -> None:
    """Record, for partitions waiting on a table, the event time of the record each waits at
    (partition → (its offset, µs)): nothing that is not late can come before it."""
    if not promises:
        return
    conn.execute(
        "INSERT INTO stream_checkpoints AS c (consumer_group, topic, partition, next_offset, "
        "watermark) SELECT %s, %s, p, o, timestamptz 'epoch' + w * interval '1 microsecond' "
        "FROM unnest(%s::int[], %s::int8[], %s::int8[]) AS t(p, o, w) "
        "ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET "
        "watermark = greatest(c.watermark, excluded.watermark)",
        (
            group, topic, list(promises), [o for o, _ in promises.values()],
            [w for _, w in promises.values()],
        ),
    )  # fmt: skip


def _micros(stamp: Any) -> int:
    if stamp is None:
        return int(NO_WATERMARK)
    return int((pd.Timestamp(stamp) - _EPOCH) // pd.Timedelta(microseconds=1))
