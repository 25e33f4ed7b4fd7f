"""The exactly-once effect of a micro-batch in PostgreSQL.

One transaction per batch: predictions are binary-COPYed into a session staging table and
inserted with ``ON CONFLICT (tx_id) DO NOTHING``; only rows actually inserted feed the
per-minute rollups and terminal counts (so a replayed batch changes nothing); the consumed
offsets (and, periodically, the card state) are written in the same transaction. After a
crash the engine resumes from what this transaction recorded, and replays are absorbed by the
primary key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import psycopg
from psycopg.types.json import Jsonb

from fraudstream.model.profile import SCORE_BINS
from fraudstream.records import PREDICTION_COLUMNS, Rejected, StoredId

__all__ = [
    "LATENCY_BUCKETS_MS",
    "SCORE_BINS",
    "Checkpoint",
    "Observed",
    "PredictionSink",
    "StoredBatch",
    "Unstorable",
    "rollup_ctes",
    "stored_ids",
]


LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000)
"""Latency histogram bounds (event time → stored): bucket 0 is under 1 ms, bucket i counts
[bounds[i-1], bounds[i]) ms, and the last bucket everything from 30 s up."""

COLUMNS = PREDICTION_COLUMNS
_TIMES = ("event_time", "kafka_time", "scored_at")
# What is COPYed, in the cheapest binary types: times as microseconds since the Unix epoch,
# amounts as float8 (rounded to numeric(14, 2) on insert), empty rule hits and reasons as NULL.
_STAGED = {
    "tx_id": "text", "event_time": "int8", "card_id": "text", "terminal_id": "text",
    "amount": "float8", "score": "float8", "decision": "text", "rule_hits": "text[]",
    "reasons": "jsonb", "model_version": "text", "engine": "text", "kafka_partition": "int4",
    "kafka_offset": "int8", "kafka_time": "int8", "scored_at": "int8", "content_hash": "int8",
    "features": "float8[]", "rules_version": "text", "late": "bool",
}  # fmt: skip
assert tuple(_STAGED) == COLUMNS

_STAGING = f"""
CREATE TEMP TABLE IF NOT EXISTS staging_predictions
    ({", ".join(f"{name} {kind}" for name, kind in _STAGED.items())}) ON COMMIT DELETE ROWS
"""
_CONVERTED = {
    **{name: f"timestamptz 'epoch' + {name} * interval '1 microsecond'" for name in _TIMES},
    "amount": "round(amount::numeric, 2)",
    "rule_hits": "coalesce(rule_hits, '{}')",
    "reasons": "coalesce(reasons, '[]')",
}

_BOUNDS = ", ".join(str(bound) for bound in LATENCY_BUCKETS_MS)


def _histogram(name: str, value: str, first: int, last: int) -> str:
    """A CTE counting ``measured`` rows per minute, engine and ``value`` in [first, last]."""
    return f"""{name} AS (
    SELECT minute, engine, array_agg(n ORDER BY {value}) AS counts
    FROM (
        SELECT m.minute, m.engine, b.{value}, count(r.{value}) AS n
        FROM (SELECT DISTINCT minute, engine FROM measured) m
        CROSS JOIN generate_series({first}, {last}) AS b({value})
        LEFT JOIN measured r
          ON r.minute = m.minute AND r.engine = m.engine AND r.{value} = b.{value}
        GROUP BY 1, 2, 3
    ) per_value
    GROUP BY 1, 2
)"""  # noqa: S608 (names and numbers from this module)


def rollup_ctes(source: str) -> str:
    """The CTEs of a ``WITH`` clause that add the rows of ``source`` (a relation with
    event_time, amount, score, decision, engine and stored_at; a name written in code, never
    input) to ``rollup_minute``; the last one, ``rollup``, returns a row per minute touched."""
    return f"""measured AS (
    SELECT date_trunc('minute', stored_at) AS minute, engine, amount, decision,
           width_bucket(extract(epoch FROM stored_at - event_time) * 1000,
                        ARRAY[{_BOUNDS}]::numeric[]) AS bucket,
           least(width_bucket(score, 0, 1, {SCORE_BINS}), {SCORE_BINS}) AS score_bin
    FROM {source}
), {_histogram("histogram", "bucket", 0, len(LATENCY_BUCKETS_MS))},
{_histogram("scores", "score_bin", 1, SCORE_BINS)}, rollup AS (
    INSERT INTO rollup_minute AS r (minute, engine, tx_count, amount_sum, approve_count,
        review_count, decline_count, amount_review, amount_decline, latency_ms_hist, score_hist)
    SELECT m.minute, m.engine, count(*), sum(m.amount),
        count(*) FILTER (WHERE m.decision = 'approve'),
        count(*) FILTER (WHERE m.decision = 'review'),
        count(*) FILTER (WHERE m.decision = 'decline'),
        coalesce(sum(m.amount) FILTER (WHERE m.decision = 'review'), 0),
        coalesce(sum(m.amount) FILTER (WHERE m.decision = 'decline'), 0),
        h.counts, s.counts
    FROM measured m JOIN histogram h USING (minute, engine) JOIN scores s USING (minute, engine)
    GROUP BY m.minute, m.engine, h.counts, s.counts
    ON CONFLICT (minute, engine) DO UPDATE SET
        tx_count = r.tx_count + excluded.tx_count,
        amount_sum = r.amount_sum + excluded.amount_sum,
        approve_count = r.approve_count + excluded.approve_count,
        review_count = r.review_count + excluded.review_count,
        decline_count = r.decline_count + excluded.decline_count,
        amount_review = r.amount_review + excluded.amount_review,
        amount_decline = r.amount_decline + excluded.amount_decline,
        latency_ms_hist = fs_histogram_add(r.latency_ms_hist, excluded.latency_ms_hist),
        score_hist = fs_histogram_add(r.score_hist, excluded.score_hist)
    RETURNING 1
)"""  # noqa: S608


# Built once from the constants above; no value from outside reaches the SQL text.
_INSERT = f"""
WITH inserted AS (
    INSERT INTO fraud_predictions ({", ".join(COLUMNS)})
    SELECT {", ".join(_CONVERTED.get(c, c) for c in COLUMNS)}
    FROM staging_predictions
    ON CONFLICT (tx_id) DO NOTHING
    RETURNING tx_id, event_time, terminal_id, amount, score, decision, engine, stored_at, late
), {rollup_ctes("inserted")}, terminals AS (
    INSERT INTO terminal_daily AS t (terminal_id, day, tx_count)
    SELECT terminal_id, (event_time AT TIME ZONE 'UTC')::date, count(*) FROM inserted
    WHERE NOT late
    GROUP BY 1, 2
    ON CONFLICT (terminal_id, day) DO UPDATE SET tx_count = t.tx_count + excluded.tx_count
    RETURNING 1
)
SELECT tx_id FROM inserted
"""  # noqa: S608


@dataclass(frozen=True)
class Checkpoint:
    """Where a consumer group stands on a partition (next offset, watermark in µs since the
    epoch), and the card state there (optional)."""

    topic: str
    partition: int
    next_offset: int
    watermark: int | None = None
    snapshot: bytes | None = None


@dataclass(frozen=True)
class Observed:
    """What a batch shows besides its predictions, for the dashboard: where its terminals are
    (``terminal_id``, ``x``, ``y``, ``lat``, ``lon``) and how its features fall in the bins of
    the scoring model's training profile (``model.profile``; none when the model has none)."""

    terminals: pd.DataFrame
    engine: str
    model_version: str
    profile: dict[str, Any] | None = None
    feature_counts: Mapping[str, np.ndarray] | None = None


@dataclass(frozen=True)
class StoredBatch:
    rows: int
    inserted_ids: frozenset[str]  # fewer than rows when a replay was absorbed

    @property
    def inserted(self) -> int:
        return len(self.inserted_ids)


class Unstorable(Exception):
    """PostgreSQL refused some rows' content (not the connection): ``rows`` are their
    positions in the batch, with the database's reason."""

    def __init__(self, rows: list[tuple[int, str]]) -> None:
        super().__init__(f"{len(rows)} rows PostgreSQL cannot store: {rows[:1]}")
        self.rows = rows


class PredictionSink:
    def __init__(
        self,
        conn: psycopg.Connection[Any],
        *,
        consumer_group: str,
        features_version: str,
    ) -> None:
        self.conn = conn
        self.group = consumer_group
        self.features_version = features_version
        self._located: set[str] = set()  # terminals whose location is stored
        self._profiled: set[str] = set()  # model versions whose profile is stored
        conn.execute(_STAGING)
        conn.commit()

    def write(
        self,
        predictions: pd.DataFrame,
        checkpoints: list[Checkpoint],
        rejected: Sequence[Rejected] = (),
        observed: Observed | None = None,
    ) -> StoredBatch:
        """Store a batch's predictions and checkpoints atomically; idempotent.

        ``predictions`` has the columns ``COLUMNS``: ``rule_hits`` lists of rule names,
        ``reasons`` JSON-able objects (lists of dicts), times timezone-aware. ``rejected``
        messages (already on the dead-letter topic) go to ``dlq_events`` in the same transaction,
        and so does what was ``observed``: feature counts only when every row was new, so
        that a replayed batch adds nothing.
        """
        located: list[str] = []
        try:
            with self.conn.transaction():
                with self.conn.cursor() as cursor:
                    self._stage(cursor, predictions)
                    inserted = {row[0] for row in cursor.execute(_INSERT).fetchall()}
                    if rejected:
                        cursor.executemany(
                            "INSERT INTO dlq_events (source_topic, source_partition, "
                            "source_offset, reason) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                            [
                                (r.topic, r.partition, r.offset, _storable(r.reason))
                                for r in rejected
                            ],
                        )
                    if observed is not None:
                        located = self._observe(
                            cursor, observed, all_new=len(inserted) == len(predictions)
                        )
                self._checkpoint(checkpoints)
        except _CONTENT_ERRORS:
            # A row's content, not the connection: find which rows, so that the caller can
            # dead-letter them and store the rest.
            raise Unstorable(self._unstorable(predictions)) from None
        self._located.update(located)
        if observed is not None and observed.profile is not None:
            self._profiled.add(observed.model_version)
        return StoredBatch(rows=len(predictions), inserted_ids=frozenset(inserted))

    @staticmethod
    def _stage(cursor: psycopg.Cursor[Any], predictions: pd.DataFrame) -> None:
        copy_sql = f"COPY staging_predictions ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
        with cursor.copy(copy_sql) as copy:
            copy.set_types(list(_STAGED.values()))
            for row in _rows(predictions):
                copy.write_row(row)

    def _unstorable(self, predictions: pd.DataFrame) -> list[tuple[int, str]]:
        """Bisect ``predictions`` in rolled-back trial inserts down to the rows PostgreSQL
        refuses, with its reason for each."""
        found: list[tuple[int, str]] = []
        ranges = [(0, len(predictions))]
        while ranges:
            start, end = ranges.pop()
            try:
                with self.conn.transaction(force_rollback=True), self.conn.cursor() as cursor:
                    self._stage(cursor, predictions.iloc[start:end])
                    cursor.execute(_INSERT)
            except _CONTENT_ERRORS as error:
                if end - start == 1:
                    found.append((start, f"PostgreSQL cannot store the row: {error}"))
                else:
                    middle = (start + end) // 2
                    ranges += [(middle, end), (start, middle)]
        return sorted(found)

    def _observe(self, cursor: psycopg.Cursor[Any], observed: Observed, all_new: bool) -> list[str]:
        """Store new terminals' locations and the batch's feature counts; returns the
        terminals located."""
        terminals = observed.terminals
        # A set lookup per terminal of the batch: Series.isin would convert the whole set.
        unseen = [terminal not in self._located for terminal in terminals["terminal_id"]]
        new = terminals[np.array(unseen, dtype=bool)]
        if len(new):
            cursor.execute(  # one statement, the columns as arrays (not a row at a time)
                "INSERT INTO terminal_locations (terminal_id, x, y, lat, lon) "
                "SELECT * FROM unnest(%s::text[], %s::float8[], %s::float8[], %s::float8[], "
                "%s::float8[]) ON CONFLICT (terminal_id) DO NOTHING",
                [[str(t) for t in new["terminal_id"]]]
                + [_floats(new[axis]) for axis in ("x", "y", "lat", "lon")],
            )
        if observed.profile is not None and observed.model_version not in self._profiled:
            cursor.execute(
                "INSERT INTO model_profiles (model_version, profile) VALUES (%s, %s) "
                "ON CONFLICT (model_version) DO NOTHING",
                (observed.model_version, Jsonb(observed.profile)),
            )
        if all_new and observed.feature_counts:
            cursor.executemany(
                "INSERT INTO feature_hour AS f (hour, engine, model_version, feature, counts) "
                "VALUES (date_trunc('hour', clock_timestamp()), %s, %s, %s, %s) "
                "ON CONFLICT (hour, engine, model_version, feature) DO UPDATE SET "
                "counts = fs_histogram_add(f.counts, excluded.counts)",
                [
                    (observed.engine, observed.model_version, name, counts.tolist())
                    for name, counts in observed.feature_counts.items()
                ],
            )
        return [str(terminal) for terminal in new["terminal_id"]]

    def _checkpoint(self, checkpoints: list[Checkpoint]) -> None:
        if not checkpoints:
            return
        with self.conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO stream_checkpoints AS s (consumer_group, topic, partition, "
                "next_offset, watermark) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET "
                "next_offset = excluded.next_offset, updated_at = now(), "
                "watermark = greatest(s.watermark, excluded.watermark)",
                [
                    (self.group, c.topic, c.partition, c.next_offset, _stamp(c.watermark))
                    for c in checkpoints
                ],
            )
            snapshots = [c for c in checkpoints if c.snapshot is not None]
            if snapshots:
                cursor.executemany(
                    "INSERT INTO feature_state (consumer_group, topic, partition, next_offset, "
                    "snapshot, features_version, watermark) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET "
                    "next_offset = excluded.next_offset, snapshot = excluded.snapshot, "
                    "features_version = excluded.features_version, "
                    "watermark = excluded.watermark, updated_at = now()",
                    [
                        (
                            self.group,
                            c.topic,
                            c.partition,
                            c.next_offset,
                            c.snapshot,
                            self.features_version,
                            _stamp(c.watermark),
                        )
                        for c in snapshots
                    ],
                )

    def offsets(self, topic: str) -> dict[int, int]:
        """The next offset to read per partition, as last committed with predictions."""
        rows = self.conn.execute(
            "SELECT partition, next_offset FROM stream_checkpoints "
            "WHERE consumer_group = %s AND topic = %s",
            (self.group, topic),
        ).fetchall()
        self.conn.commit()
        return {int(p): int(o) for p, o in rows}

    def snapshots(self, topic: str) -> Mapping[int, tuple[int, bytes, int | None]]:
        """Per partition: (offset the snapshot is valid at, card state bytes, watermark µs)."""
        # Binary results: as text, a bytea doubles to hex, and PostgreSQL cannot send one of
        # over 512 MiB that way (a large card state could be stored but never restored).
        with self.conn.cursor(binary=True) as cursor:
            rows = cursor.execute(
                "SELECT partition, next_offset, snapshot, "
                "(extract(epoch FROM watermark) * 1000000)::int8 FROM feature_state "
                "WHERE consumer_group = %s AND topic = %s AND features_version = %s",
                (self.group, topic, self.features_version),
            ).fetchall()
        self.conn.commit()
        return {int(p): (int(o), bytes(s), None if w is None else int(w)) for p, o, s, w in rows}


_CONTENT_ERRORS = (psycopg.DataError, psycopg.IntegrityError)


def _storable(text: str) -> str:
    """A reason as PostgreSQL text: bounded, and no NUL (it may quote the input)."""
    return text.replace("\x00", "\\u0000")[:1000]


def _stamp(micros: int | None) -> pd.Timestamp | None:
    if micros is None or micros == np.iinfo(np.int64).min:
        return None
    return pd.Timestamp(micros, unit="us", tz="UTC")


def stored_ids(conn: psycopg.Connection[Any], tx_ids: list[str]) -> dict[str, StoredId]:
    """Which of ``tx_ids`` are stored, from which message and with what content."""
    if not tx_ids:
        return {}
    rows = conn.execute(
        "SELECT tx_id, content_hash, kafka_partition, kafka_offset FROM fraud_predictions "
        "WHERE tx_id = ANY(%s)",
        (tx_ids,),
    ).fetchall()
    conn.commit()
    return {str(tx): StoredId(digest, partition, offset) for tx, digest, partition, offset in rows}


def _floats(column: pd.Series) -> list[float | None]:
    values = pd.to_numeric(column, errors="coerce").astype(float).to_numpy()
    return [None if np.isnan(v) else float(v) for v in values]


def _rows(frame: pd.DataFrame) -> list[tuple[object, ...]]:
    """The frame as COPY rows, converted column by column (per-row Python is the cost here)."""
    columns = []
    for name in COLUMNS:
        column = frame[name]
        if name in _TIMES:
            stamps = pd.to_datetime(column, utc=True)
            micros = stamps.dt.tz_localize(None).to_numpy("datetime64[us]").astype(np.int64)
            missing = stamps.isna().to_numpy()
            values = micros.tolist()
            if missing.any():
                values = [None if gap else v for v, gap in zip(values, missing, strict=True)]
        elif name in ("rule_hits", "reasons"):
            values = [v if len(v) else None for v in column.tolist()]
        elif name == "features":
            values = column.tolist()  # one list of floats per row, FEATURE_NAMES order
        else:
            values = column.tolist()
        columns.append(values)
    return list(zip(*columns, strict=True))
