"""The exactly-once effect of a micro-batch in PostgreSQL.

One transaction per batch: predictions are staged in a session table (binary COPY encoded
from Arrow columns by pgpq; a small batch with INSERTs in one pipeline with the rest of its
transaction) and inserted with
``ON CONFLICT (tx_id) DO NOTHING``; only rows actually inserted (and not late)
feed the daily terminal counts the next terminal tables read; the dead letters' records, the
consumed offsets and watermarks (and, periodically, the card state) are written in the same
transaction. The dashboard's projections (``projections.py``) are registered beside this core
and fed in the same transaction from the rows actually inserted. After a crash the engine
resumes from what this transaction recorded, and replays are absorbed by the primary key.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
from pgpq import ArrowToPostgresBinaryEncoder

from fraudstream.features.definitions import CARD_STATE_TTL, CARD_WINDOWS
from fraudstream.records import PREDICTION_COLUMNS, Rejected, StoredId
from fraudstream.store.projections import DASHBOARD_PROJECTIONS, Observed, Projection

__all__ = [
    "Checkpoint", "PredictionSink", "Snapshot", "StepLookups", "StoredBatch", "StoredState",
    "Unstorable", "step_lookups", "stored_ids",
]  # fmt: skip


COLUMNS = PREDICTION_COLUMNS
CHANGES_KEPT = CARD_STATE_TTL + max(CARD_WINDOWS)
"""How far behind the newest a checkpoint's card changes stay stored: a card idle longer
than the TTL is forgotten, and a card alive sees back at most its longest window."""
_TIMES = ("event_time", "kafka_time", "scored_at")
_NAT = np.iinfo(np.int64).min  # a missing time, in µs since the epoch
# What is COPYed, in the cheapest binary types: times as microseconds since the Unix epoch,
# amounts as float8 (rounded to numeric(14, 2) on insert), reasons as JSON text (jsonb on
# insert), empty rule hits and reasons as NULL. Beside each, the Arrow type that pgpq encodes
# as that PostgreSQL type (binary COPY takes only the exact type).
_STAGED = {
    "tx_id": "text", "event_time": "int8", "card_id": "text", "terminal_id": "text",
    "amount": "float8", "score": "float8", "decision": "text", "rule_hits": "text[]",
    "reasons": "text", "model_version": "text", "engine": "text", "kafka_partition": "int4",
    "kafka_offset": "int8", "kafka_time": "int8", "scored_at": "int8", "content_hash": "int8",
    "features": "float8[]", "rules_version": "text", "late": "bool",
}  # fmt: skip
assert tuple(_STAGED) == COLUMNS
_ARROW = {
    "text": pa.string(), "int8": pa.int64(), "int4": pa.int32(), "float8": pa.float64(),
    "bool": pa.bool_(), "text[]": pa.list_(pa.string()), "float8[]": pa.list_(pa.float64()),
}  # fmt: skip
_STAGED_SCHEMA = pa.schema([(name, _ARROW[kind]) for name, kind in _STAGED.items()])
_json = msgspec.json.Encoder()

_STAGE_ROW = (
    f"INSERT INTO staging_predictions ({', '.join(_STAGED)}) "  # noqa: S608 (names from code)
    f"VALUES ({', '.join(f'%s::{kind}' for kind in _STAGED.values())})"
)
PIPELINED_ROWS = 4
"""A batch of up to this many rows is staged with one INSERT per row in a pipeline with the
rest of its transaction (one round trip fewer); a larger one with binary COPY. Since the COPY
is encoded from Arrow (ADR 15) it is the cheaper from about five rows: 40 rows, 4.9–6.4 ms
and 2.0–2.9 ms of the engine's CPU against 7.6–9.2 and 4.8–5.7 pipelined; one row, 3.1–4.7
against 2.2–4.4 ms (``/tmp`` probe, 100 writes of each size, three alternating rounds)."""

_STAGING = f"""
CREATE TEMP TABLE IF NOT EXISTS staging_predictions
    ({", ".join(f"{name} {kind}" for name, kind in _STAGED.items())}) ON COMMIT DELETE ROWS
"""
_CONVERTED = {
    **{name: f"timestamptz 'epoch' + {name} * interval '1 microsecond'" for name in _TIMES},
    "amount": "round(amount::numeric, 2)",
    "rule_hits": "coalesce(rule_hits, '{}')",
    "reasons": "coalesce(reasons::jsonb, '[]')",
}


def _insert_sql(projections: list[Projection]) -> str:
    """The core statement — insert if absent, count terminals of rows not late — with the
    projections' CTEs joined to it. Built from names and constants written in code: no value
    from outside reaches the SQL text."""
    ctes = [
        f"""inserted AS (
    INSERT INTO fraud_predictions ({", ".join(COLUMNS)})
    SELECT {", ".join(_CONVERTED.get(c, c) for c in COLUMNS)}
    FROM staging_predictions
    ON CONFLICT (tx_id) DO NOTHING
    RETURNING tx_id, event_time, card_id, terminal_id, amount, score, decision, engine,
        stored_at, late
)""",  # noqa: S608
        """terminals AS (
    INSERT INTO terminal_daily AS t (terminal_id, day, tx_count)
    SELECT terminal_id, (event_time AT TIME ZONE 'UTC')::date, count(*) FROM inserted
    WHERE NOT late
    GROUP BY 1, 2
    ON CONFLICT (terminal_id, day) DO UPDATE SET tx_count = t.tx_count + excluded.tx_count
    RETURNING 1
)""",
    ]
    ctes += [cte for cte in (p.ctes("inserted") for p in projections) if cte]
    return f"WITH {', '.join(ctes)}\nSELECT tx_id FROM inserted"


@dataclass(frozen=True)
class Snapshot:
    """A card-state checkpoint of a partition: the rows appended to its card histories since
    the previous checkpoint (``CardChanges`` bytes, newest time in µs), the checkpoint's
    sequence (1, 2, …), the offset it is valid at and the watermark there (µs)."""

    next_offset: int
    watermark: int | None
    changes: bytes
    sequence: int
    newest_us: int | None = None


@dataclass(frozen=True)
class StoredState:
    """Where a partition's card state stands in PostgreSQL: the offset and watermark of its
    last checkpoint, that checkpoint's sequence, and the whole-state base (if any) that the
    checkpoints' changes are replayed over."""

    next_offset: int
    watermark: int | None
    sequence: int
    base: bytes | None


@dataclass(frozen=True)
class Checkpoint:
    """Where a consumer group stands on a partition (next offset, watermark in µs since the
    epoch), and a card-state snapshot to keep (optional; it may stand earlier)."""

    topic: str
    partition: int
    next_offset: int
    watermark: int | None = None
    snapshot: Snapshot | None = None


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
        projections: list[Projection] | None = None,
    ) -> None:
        self.conn = conn
        self.group = consumer_group
        self.features_version = features_version
        self.projections = DASHBOARD_PROJECTIONS() if projections is None else projections
        self._insert = _insert_sql(self.projections)
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
        # A small batch goes in one pipeline: its rows as INSERTs, then everything else of the
        # transaction, in two round trips instead of one per statement (COPY, cheaper for a
        # large batch, cannot share a pipeline).
        pipelined = len(predictions) <= PIPELINED_ROWS
        try:
            with self.conn.pipeline() if pipelined else nullcontext(), self.conn.transaction():
                with self.conn.cursor() as cursor:
                    if pipelined:
                        cursor.executemany(_STAGE_ROW, _rows(predictions))
                    else:
                        self._stage(cursor, predictions)
                    inserted = {row[0] for row in cursor.execute(self._insert).fetchall()}
                    if rejected:
                        cursor.executemany(
                            "INSERT INTO dlq_events (source_topic, source_partition, "
                            "source_offset, reason) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                            [
                                (r.topic, r.partition, r.offset, _storable(r.reason))
                                for r in rejected
                            ],
                        )
                    all_new = len(inserted) == len(predictions)
                    for projection in self.projections:
                        projection.write(cursor, observed, all_new)
                self._checkpoint(checkpoints)
        except _CONTENT_ERRORS:
            # A row's content, not the connection: find which rows, so that the caller can
            # dead-letter them and store the rest.
            raise Unstorable(self._unstorable(predictions)) from None
        for projection in self.projections:
            projection.committed()
        return StoredBatch(rows=len(predictions), inserted_ids=frozenset(inserted))

    @staticmethod
    def _stage(cursor: psycopg.Cursor[Any], predictions: pd.DataFrame) -> None:
        """Binary COPY encoded column by column (pgpq): psycopg's ``write_row`` dumps every
        row's arrays in Python, 16–20 µs of CPU a row against 3 (5,000 rows, ``/tmp``
        probe; docs/adr/0015-copy-encoded-from-arrow.md)."""
        batch = _arrow(predictions)
        encoder = ArrowToPostgresBinaryEncoder(batch.schema)
        copy_sql = f"COPY staging_predictions ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
        with cursor.copy(copy_sql) as copy:
            copy.write(encoder.write_header())
            copy.write(encoder.write_batch(batch))
            copy.write(encoder.finish())

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
                    cursor.execute(self._insert)
            except _CONTENT_ERRORS as error:
                if end - start == 1:
                    found.append((start, f"PostgreSQL cannot store the row: {error}"))
                else:
                    middle = (start + end) // 2
                    ranges += [(middle, end), (start, middle)]
        return sorted(found)

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
            snapshots = [(c, c.snapshot) for c in checkpoints if c.snapshot is not None]
            if snapshots:
                self._store_changes(snapshots)

    def _store_changes(self, snapshots: list[tuple[Checkpoint, Snapshot]]) -> None:
        """Each checkpoint's card changes (a checkpoint with none keeps the previous one's
        sequence and stores no row), and where the partition's state now stands; the
        changes no card can need any more (older than a card's TTL plus the longest
        window before the newest) are dropped."""
        changed = [(c, s) for c, s in snapshots if s.changes]
        with self.conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO card_changes (consumer_group, topic, partition, sequence, newest, "
                "rows) VALUES (%s, %s, %s, %s, %s, %s)",
                [
                    (self.group, c.topic, c.partition, s.sequence, _stamp(s.newest_us), s.changes)
                    for c, s in changed
                ],
            )
            cursor.executemany(
                "INSERT INTO feature_state (consumer_group, topic, partition, next_offset, "
                "changes_through, features_version, watermark) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET "
                "next_offset = excluded.next_offset, changes_through = excluded.changes_through, "
                "features_version = excluded.features_version, "
                "watermark = excluded.watermark, updated_at = now()",
                [self._state_row(c, s) for c, s in snapshots],
            )
            cursor.executemany(
                "DELETE FROM card_changes WHERE consumer_group = %s AND topic = %s "
                "AND partition = %s AND newest < (SELECT max(newest) FROM card_changes "
                "WHERE consumer_group = %s AND topic = %s AND partition = %s) - %s",
                [(self.group, c.topic, c.partition) * 2 + (CHANGES_KEPT,) for c, _s in changed],
            )

    def _state_row(self, checkpoint: Checkpoint, snapshot: Snapshot) -> tuple[Any, ...]:
        return (
            self.group, checkpoint.topic, checkpoint.partition, snapshot.next_offset,
            snapshot.sequence, self.features_version, _stamp(snapshot.watermark),
        )  # fmt: skip

    def offsets(self, topic: str) -> dict[int, int]:
        """The next offset to read per partition, as last committed with predictions."""
        rows = self.conn.execute(
            "SELECT partition, next_offset FROM stream_checkpoints "
            "WHERE consumer_group = %s AND topic = %s",
            (self.group, topic),
        ).fetchall()
        self.conn.commit()
        return {int(p): int(o) for p, o in rows}

    def card_states(self, topic: str) -> Mapping[int, StoredState]:
        """Per partition: where its card state stands (only for this feature set)."""
        # Binary results: as text, a bytea doubles to hex, and PostgreSQL cannot send one of
        # over 512 MiB that way (a large base could be stored but never restored).
        with self.conn.cursor(binary=True) as cursor:
            rows = cursor.execute(
                "SELECT partition, next_offset, "
                "(extract(epoch FROM watermark) * 1000000)::int8, changes_through, snapshot "
                "FROM feature_state "
                "WHERE consumer_group = %s AND topic = %s AND features_version = %s",
                (self.group, topic, self.features_version),
            ).fetchall()
        self.conn.commit()
        return {
            int(p): StoredState(int(o), None if w is None else int(w), int(s), _bytes(base))
            for p, o, w, s, base in rows
        }

    def card_changes(self, topic: str, partition: int, after: int) -> Iterator[tuple[int, bytes]]:
        """The partition's stored card changes after sequence ``after``, in order, a few at a
        time (a long history never needs to fit in memory)."""
        last = after
        while True:
            with self.conn.cursor(binary=True) as cursor:
                rows = cursor.execute(
                    "SELECT sequence, rows FROM card_changes WHERE consumer_group = %s "
                    "AND topic = %s AND partition = %s AND sequence > %s "
                    "ORDER BY sequence LIMIT 2",
                    (self.group, topic, partition, last),
                ).fetchall()
            self.conn.commit()
            if not rows:
                return
            for sequence, blob in rows:
                yield int(sequence), bytes(blob)
            last = int(rows[-1][0])

    def forget_card_state(self, topic: str, partition: int) -> None:
        """Drop a partition's card checkpoints (its state starts again from the log's
        beginning: under another feature set, say)."""
        with self.conn.transaction():
            for table in ("card_changes", "feature_state"):
                self.conn.execute(
                    f"DELETE FROM {table} WHERE consumer_group = %s AND topic = %s "  # noqa: S608
                    "AND partition = %s",
                    (self.group, topic, partition),
                )


_CONTENT_ERRORS = (psycopg.DataError, psycopg.IntegrityError)


def _storable(text: str) -> str:
    """A reason as PostgreSQL text: bounded, and no NUL (it may quote the input)."""
    return text.replace("\x00", "\\u0000")[:1000]


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def _stamp(micros: int | None) -> pd.Timestamp | None:
    if micros is None or micros == _NAT:
        return None
    return pd.Timestamp(micros, unit="us", tz="UTC")


def stored_ids(conn: psycopg.Connection[Any], tx_ids: list[str]) -> dict[str, StoredId]:
    """Which of ``tx_ids`` are stored, from which message and with what content."""
    return step_lookups(conn, tx_ids).stored if tx_ids else {}


@dataclass(frozen=True)
class StepLookups:
    """What a step of the local engine reads from PostgreSQL, in one round trip: which of its
    tx_ids are stored (as ``stored_ids``) and the day of the newest sealed terminal table
    (for ``late_after_seal``)."""

    stored: dict[str, StoredId]
    newest_sealed: np.datetime64 | None


def step_lookups(conn: psycopg.Connection[Any], tx_ids: list[str]) -> StepLookups:
    """Both lookups of a step in one statement: each is a round trip, and at a few records a
    step (the decision API's traffic) the step's fixed costs are what limits the engine
    (docs/benchmarks.md, "Where a request's time goes at 200 req/s")."""
    # %b: a list of strings dumped as text costs psycopg about a microsecond an element in
    # Python (5 ms for a batch of 5,000 ids); in binary, a sixth of that.
    rows = conn.execute(
        "SELECT tx_id, content_hash, kafka_partition, kafka_offset, NULL::date "
        "FROM fraud_predictions WHERE tx_id = ANY(%b) "
        "UNION ALL SELECT NULL, NULL, NULL, NULL, max(day) FROM terminal_tables",
        (tx_ids,),
    ).fetchall()
    conn.commit()
    stored = {
        str(tx): StoredId(digest, partition, offset)
        for tx, digest, partition, offset, _day in rows
        if tx is not None  # (the primary key: never NULL in a stored row)
    }
    newest = next((day for tx, *_, day in rows if tx is None), None)
    return StepLookups(stored, None if newest is None else np.datetime64(newest, "D"))


def _rows(frame: pd.DataFrame) -> list[tuple[object, ...]]:
    """The frame as staged rows for the pipelined INSERTs of a small batch, converted column
    by column (per-row Python is the cost here)."""
    columns = []
    for name in COLUMNS:
        column = frame[name]
        if name in _TIMES:
            stamps = _micros(column)
            values = stamps.tolist()
            if (stamps == _NAT).any():
                values = [None if v == _NAT else v for v in values]
        elif name == "reasons":
            values = _reasons(column)
        elif name == "rule_hits":
            values = [v if len(v) else None for v in column.tolist()]
        elif name == "features":
            values = [list(map(float, v)) for v in column.tolist()]  # FEATURE_NAMES order
        else:
            values = column.tolist()
        columns.append(values)
    return list(zip(*columns, strict=True))


def _arrow(frame: pd.DataFrame) -> pa.RecordBatch:
    """The frame as the staged columns in Arrow, whole columns at a time (the text columns
    are Arrow already; the features become one float block)."""
    arrays: list[pa.Array] = []
    for name, field in zip(COLUMNS, _STAGED_SCHEMA, strict=True):
        column = frame[name]
        if name in _TIMES:
            stamps = _micros(column)
            arrays.append(pa.array(stamps, pa.int64(), mask=stamps == _NAT))
        elif name == "reasons":
            arrays.append(pa.array(_reasons(column), pa.string()))
        elif name == "rule_hits":
            arrays.append(pa.array([v if len(v) else None for v in column.tolist()], field.type))
        elif name == "features":
            arrays.append(_float_lists(list(column)))
        elif field.type == pa.string():
            text = pa.array(column.array, pa.string(), from_pandas=True)
            # A frame put together from others (pd.concat) holds its Arrow text in chunks.
            arrays.append(text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text)
        else:
            arrays.append(pa.array(column.to_numpy(field.type.to_pandas_dtype())))
    return pa.RecordBatch.from_arrays(arrays, schema=_STAGED_SCHEMA)


def _micros(column: pd.Series) -> np.ndarray:
    """A time column as µs since the epoch (UTC), ``_NAT`` where missing."""
    if not isinstance(column.dtype, pd.DatetimeTZDtype):  # a scalar, or naive: as UTC
        column = pd.to_datetime(column, utc=True)
    stamps: np.ndarray = column.to_numpy("datetime64[us]")  # without the per-call ``.dt``
    return stamps.view(np.int64)


def _reasons(column: pd.Series) -> list[str | None]:
    """Each row's reasons as JSON text, NULL when it has none (most rows)."""
    return [_json.encode(v).decode() if len(v) else None for v in column.tolist()]


def _float_lists(rows: Sequence[Any]) -> pa.Array:
    """Feature vectors (one array or list per row, all of one length) as an Arrow list
    column built from one float block."""
    if not len(rows):
        return pa.array([], pa.list_(pa.float64()))
    block = np.vstack(rows).astype(np.float64, copy=False)
    offsets = np.arange(len(block) + 1, dtype=np.int32) * block.shape[1]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(block.ravel(), pa.float64()))
