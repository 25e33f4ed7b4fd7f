"""One micro-batch through the engine's pure core: decoded records in, predictions and
rejections out, card state and watermarks advanced. No I/O: the engine fetches what the
step needs (terminal tables, which tx_ids are stored) before calling it, and every runtime
(the local engine, the in-memory test runtime, offline replays) calls this same code.

Order of work, per partition in log order: undecodable records are rejected; a ``tx_id``
already stored from another message is a replay (same content) or a conflict (other
content) and is rejected without touching state; each remaining record is marked late or
not against its partition's watermark; card features (state updated), terminal and calendar
features, score, decision, explanation. A record that fails in features, scoring or
explanation is rejected with the error, and the rest goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import numpy as np
import pandas as pd

from fraudstream.engines.columns import RecordColumns, micros
from fraudstream.engines.scoring import empty_predictions, predictions_of
from fraudstream.features import FEATURE_NAMES, CardState, FeatureComputer, TerminalTable
from fraudstream.features.card import COORDINATES, CardInputs, card_features
from fraudstream.features.watermarks import NO_WATERMARK, late_rows
from fraudstream.model.scoring import Scorer
from fraudstream.policy import RuleSet
from fraudstream.records import Rejected, StoredId
from fraudstream.schema import Invalid, Transaction, content_digest

__all__ = [
    "CARD_FEATURES",
    "Decoded",
    "PartitionState",
    "StepHost",
    "StepResult",
    "StoredId",
    "blocked_at",
    "columns_of",
    "drive",
    "duplicate_reason",
    "earliest_day",
    "late_after_seal",
    "step",
]

log = logging.getLogger("fraudstream.engine")

CARD_FEATURES = [name for name in FEATURE_NAMES if name.startswith("card_")]
"""The features computed from a card's state, in ``FEATURE_NAMES`` order."""


@dataclass(slots=True)
class Decoded:
    """A consumed message and what decoding made of it. Not changed once made, but not
    frozen: one is made per message, and a frozen dataclass's ``__init__`` (a
    ``object.__setattr__`` per field) took 1.1 µs against 0.2."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    kafka_time_ms: int | None  # the broker's append time, when it gave one
    record: Transaction | Invalid
    reply_to: str | None = None  # the API process waiting for this record's decision
    digest: int | None = None  # the record's content digest, when computed already

    def rejected(self, reason: str) -> Rejected:
        return Rejected(self.topic, self.partition, self.offset, reason, self.key, self.value)

    @property
    def day_number(self) -> int | None:
        """The UTC day of the record's event time, in days since the epoch. An int, computed
        when asked: ``drive`` asks it of every record, and a ``datetime64`` (or a cached
        property, which takes a lock in Python 3.11) cost it a few microseconds a record."""
        if isinstance(self.record, Invalid):
            return None
        return int(self.record.event_time.timestamp() // 86_400)

    @property
    def day(self) -> np.datetime64 | None:
        """The UTC day of the record's event time."""
        number = self.day_number
        return None if number is None else np.datetime64(number, "D")


@dataclass
class PartitionState:
    """What an engine keeps per owned partition: its cards and its event-time watermark."""

    cards: CardState = field(default_factory=CardState)
    watermark: int = int(NO_WATERMARK)


@dataclass(frozen=True)
class StepResult:
    predictions: pd.DataFrame  # PREDICTION_COLUMNS
    features: pd.DataFrame  # FEATURE_NAMES, aligned with predictions
    batch: RecordColumns  # the scored records, aligned with predictions
    rejected: list[Rejected]
    redelivered: frozenset[str]  # tx_ids this very message stored before (a replay after a crash)
    late: int
    replays: int
    conflicts: int


def blocked_at(
    items: list[Decoded], available: set[np.datetime64]
) -> tuple[list[Decoded], dict[int, Decoded]]:
    """Split ``items`` (log order per partition) into those that can be processed with the
    terminal tables of ``available`` days, and per partition the first record that needs a
    table not yet there (it and everything after it in its partition wait)."""
    ready: list[Decoded] = []
    first_blocked: dict[int, Decoded] = {}
    numbers = {_day_number(day) for day in available}
    for item in items:
        if item.partition in first_blocked:
            continue
        number = item.day_number
        if number is not None and number not in numbers:
            first_blocked[item.partition] = item
            continue
        ready.append(item)
    return ready, first_blocked


def columns_of(
    items: list[Decoded], late: np.ndarray, digests: list[int] | None = None
) -> RecordColumns:
    """Valid records as columns, with where each came from, its content digest (``digests``,
    when already computed) and its late flag."""
    records = [item.record for item in items]
    n = len(items)
    if digests is None:
        digests = [content_digest(r) for r in records]  # type: ignore[arg-type]
    return RecordColumns.of(
        records,  # type: ignore[arg-type]
        event_us=np.fromiter((micros(r.event_time) for r in records), np.int64, n),  # type: ignore[union-attr]
        partitions=np.fromiter((i.partition for i in items), np.int32, n),
        offsets=np.fromiter((i.offset for i in items), np.int64, n),
        appended_ms=np.fromiter((i.kafka_time_ms or 0 for i in items), np.int64, n),
        digests=digests,
        late=late,
    )


def duplicate_reason(
    tx_id: str, digest: int, partition: int, offset: int, before: StoredId | None
) -> str | None:
    """Why a record whose ``tx_id`` was ``before`` seen must be rejected: an identical replay
    or other content under a reused id; None when it is new or the very same message again
    (processed before a crash, processed again)."""
    if before is None or (before.partition == partition and before.offset == offset):
        return None
    if before.content_hash == digest:
        return (
            f"replay: tx_id {tx_id!r} was already processed with identical content "
            f"(partition {before.partition}, offset {before.offset})"
        )
    return (
        f"duplicate tx_id with different content: {tx_id!r} was first seen at partition "
        f"{before.partition}, offset {before.offset}"
    )


def _deduplicate(
    items: list[Decoded], stored: Mapping[str, StoredId]
) -> tuple[list[Decoded], list[int], list[Rejected], set[str], int, int]:
    """Records whose tx_id is new (or stored from this very message) with their content
    digests, the duplicates rejected, the redelivered tx_ids, and how many replays and
    conflicts there were."""
    kept: list[Decoded] = []
    digests: list[int] = []
    rejected: list[Rejected] = []
    redelivered: set[str] = set()
    seen: dict[str, StoredId] = {}
    replays = conflicts = 0
    for item in items:
        record = item.record
        assert isinstance(record, Transaction)
        digest = content_digest(record) if item.digest is None else item.digest
        before = seen.get(record.tx_id) or stored.get(record.tx_id)
        reason = duplicate_reason(record.tx_id, digest, item.partition, item.offset, before)
        if reason is None:
            if before is not None:
                redelivered.add(record.tx_id)  # processed before a crash: process it again
            seen[record.tx_id] = before or StoredId(digest, item.partition, item.offset)
            kept.append(item)
            digests.append(digest)
        else:
            replays += reason.startswith("replay")
            conflicts += not reason.startswith("replay")
            rejected.append(item.rejected(reason))
    return kept, digests, rejected, redelivered, replays, conflicts


def _card_features(
    batch: RecordColumns, states: Mapping[int, PartitionState]
) -> tuple[dict[str, np.ndarray], dict[int, str]]:
    """Card features of ``batch``, partition by partition; a partition whose rows fail
    together is done row by row (``card_features`` changes no state when it raises), so that
    only the failing rows are left out."""
    n = len(batch)
    partitions = batch.kafka_partition
    columns: dict[str, np.ndarray] = {}
    failed: dict[int, str] = {}

    def put(rows: np.ndarray, values: Mapping[str, np.ndarray]) -> None:
        for name, column in values.items():
            columns.setdefault(name, np.full(n, np.nan))[rows] = column

    inputs = CardInputs.build(  # once: each partition takes its rows
        card_ids=batch.card_id, event_us=batch.event_us, amounts=batch.amount,
        terminal_ids=batch.terminal_id,
        coordinates={name: batch.column(name) for name in COORDINATES},
    )  # fmt: skip
    for partition in np.unique(partitions):
        rows = np.flatnonzero(partitions == partition)
        cards = states[int(partition)].cards
        try:
            put(rows, card_features(cards, inputs.take(rows)))
            continue
        except Exception:
            log.warning("card features failed on %d rows; computing row by row", len(rows))
        for row in rows:
            try:
                put(np.array([row]), card_features(cards, inputs.take(np.array([row]))))
            except Exception as error:
                failed[int(row)] = f"features failed: {type(error).__name__}: {error}"
    return columns, failed


def _features(
    batch: RecordColumns,
    states: Mapping[int, PartitionState],
    tables: Mapping[np.datetime64, TerminalTable],
    precomputed: Mapping[tuple[int, int], np.ndarray] | None,
) -> tuple[pd.DataFrame, dict[int, str]]:
    """The whole feature vector of each row of ``batch`` that did not fail (the frame's
    index: the row's position in ``batch``), and the rows that failed."""
    if precomputed is None:
        card, failed = _card_features(batch, states)
    else:  # card features computed where the card state lives (Spark's state operator)
        keys = zip(batch.kafka_partition.tolist(), batch.kafka_offset.tolist(), strict=True)
        matrix = np.vstack([precomputed[key] for key in keys])
        card, failed = {name: matrix[:, i] for i, name in enumerate(CARD_FEATURES)}, {}
    rows = np.arange(len(batch))
    if failed:
        rows = np.array([row for row in rows if row not in failed], dtype=np.int64)
        batch = batch.take(rows)
        card = {name: values[rows] for name, values in card.items()}
    vectors = FeatureComputer(tables=tables.__getitem__).vectors(
        amounts=batch.amount, event_us=batch.event_us, terminal_ids=batch.terminal_id, card=card
    )
    return pd.DataFrame(vectors, columns=list(FEATURE_NAMES), index=rows), failed


def late_after_seal(predictions: pd.DataFrame, sealed: np.datetime64 | None) -> int:
    """Mark late (in place) the rows a sealed terminal table should have counted but did not;
    returns how many. Possible only after the table of ``sealed`` was sealed with an idle
    partition that later received older records (docs/adr/0004)."""
    if sealed is None or not len(predictions):
        return 0
    days = predictions["event_time"].to_numpy(dtype="datetime64[us]").astype("datetime64[D]")
    missed = (days <= sealed - np.timedelta64(2, "D")) & ~predictions["late"].to_numpy(dtype=bool)
    if missed.any():
        log.warning(
            "%d records older than the sealed terminal table of %s counted as late",
            int(missed.sum()), sealed,
        )  # fmt: skip
        predictions.loc[missed, "late"] = True
    return int(missed.sum())


def _late(
    valid: list[Decoded], states: Mapping[int, PartitionState], lateness: timedelta
) -> dict[tuple[int, int], bool]:
    """Late flag per (partition, offset), advancing each partition's watermark."""
    partitions = np.fromiter((i.partition for i in valid), np.int64, len(valid))
    event_us = np.fromiter(
        (micros(i.record.event_time) for i in valid),  # type: ignore[union-attr]
        np.int64,
        len(valid),
    )
    watermarks = {p: state.watermark for p, state in states.items()}
    flags = late_rows(partitions, event_us, watermarks, int(lateness.total_seconds() * 1_000_000))
    for partition in np.unique(partitions):
        states[int(partition)].watermark = watermarks[int(partition)]
    return {(i.partition, i.offset): bool(flag) for i, flag in zip(valid, flags, strict=True)}


def step(
    items: list[Decoded],
    states: Mapping[int, PartitionState],
    tables: Mapping[np.datetime64, TerminalTable],
    stored: Mapping[str, StoredId],
    *,
    scorer: Scorer,
    rules: RuleSet,
    scored_at: datetime,
    engine: str,
    lateness: timedelta,
    precomputed: Mapping[tuple[int, int], np.ndarray] | None = None,
) -> StepResult:
    """Process ``items`` (log order per partition; every valid record's day in ``tables``).
    ``precomputed``: card features (``CARD_FEATURES`` order) by (partition, offset), when the
    runtime keeps card state elsewhere; ``states`` then only carry watermarks."""
    rejected = [i.rejected(i.record.reason) for i in items if isinstance(i.record, Invalid)]
    valid = [i for i in items if not isinstance(i.record, Invalid)]
    # Every valid record moves its partition's watermark, duplicates too: the watermark is a
    # property of the log, whatever is later made of each record.
    late = _late(valid, states, lateness)
    kept, digests, duplicates, redelivered, replays, conflicts = _deduplicate(valid, stored)
    rejected += duplicates

    def empty() -> StepResult:  # built only when needed: two frames cost a millisecond
        return StepResult(
            empty_predictions(), pd.DataFrame(), columns_of([], np.zeros(0, dtype=bool)),
            rejected, frozenset(), 0, replays, conflicts,
        )  # fmt: skip

    if not kept:
        return empty()
    kept_late = np.array([late[(i.partition, i.offset)] for i in kept], dtype=bool)
    batch = columns_of(kept, kept_late, digests)
    features, failed = _features(batch, states, tables, precomputed)
    if failed:
        rejected += [kept[row].rejected(reason) for row, reason in sorted(failed.items())]
        keep = np.array([row for row in range(len(kept)) if row not in failed], dtype=np.int64)
        batch, kept = batch.take(keep), [kept[row] for row in keep]
        features = features.reset_index(drop=True)
    if not kept:
        return empty()
    scored = predictions_of(batch, features, scorer, rules, scored_at, engine=engine)
    if scored.failed:
        rejected += [kept[row].rejected(reason) for row, reason in scored.failed]
        batch = batch.take(scored.kept)
        features = features.iloc[scored.kept]
    return StepResult(
        predictions=scored.predictions,
        features=features.reset_index(drop=True),
        batch=batch,
        rejected=rejected,
        redelivered=frozenset(redelivered),
        late=int(batch.late.sum()),
        replays=replays,
        conflicts=conflicts,
    )


class StepHost(Protocol):
    """What a runtime gives ``drive``: its I/O, done before or after the pure step."""

    partitions: dict[int, PartitionState]
    name: str
    lateness: timedelta

    @property
    def scorer(self) -> Scorer: ...

    @property
    def rules(self) -> RuleSet: ...

    @property
    def precomputed(self) -> Mapping[tuple[int, int], np.ndarray] | None:
        """Card features by (partition, offset), when card state lives elsewhere."""
        ...

    def now(self) -> datetime: ...

    def tables_for(self, days: set[np.datetime64]) -> dict[np.datetime64, TerminalTable]:
        """The sealed tables among ``days`` (fetched, not built)."""
        ...

    def stored_ids(self, tx_ids: list[str]) -> Mapping[str, StoredId]:
        """Which of ``tx_ids`` are stored or in flight."""
        ...

    def seal_for(self, waiting: dict[int, Decoded]) -> bool:
        """Store what was stepped, record the waiting records' event times as their
        partitions' promises, and seal the table the earliest one needs if the logs allow;
        True when sealed."""
        ...

    def hold(self, waiting: dict[int, Decoded]) -> None:
        """Stop reading the waiting partitions until their table can be sealed; each is read
        again from its waiting record."""
        ...

    def commit(self, items: list[Decoded], result: StepResult) -> None:
        """Dead-letter, store and checkpoint one step's outcome (its commit order)."""
        ...


def _day_number(day: np.datetime64) -> int:
    return int(np.asarray(day).astype("datetime64[D]").astype(np.int64))


def earliest_day(waiting: Mapping[int, Decoded]) -> np.datetime64:
    """The earliest day the waiting records need a table for."""
    days = [item.day for item in waiting.values()]
    assert None not in days  # only valid records wait for a table
    return min(day for day in days if day is not None)


def drive(items: list[Decoded], host: StepHost) -> None:
    """Process ``items`` (log order per partition) in steps: each step takes, per partition,
    the records whose terminal tables are sealed; a table not sealed yet is sealed when the
    logs allow it, else its partition waits from its first record that needs it."""
    while items:
        numbers = {number for number in (item.day_number for item in items) if number is not None}
        tables = host.tables_for({np.datetime64(number, "D") for number in numbers})
        ready, waiting = blocked_at(items, set(tables))
        if ready:
            valid_ids = [i.record.tx_id for i in ready if isinstance(i.record, Transaction)]
            result = step(
                ready, host.partitions, tables, host.stored_ids(valid_ids),
                scorer=host.scorer, rules=host.rules, scored_at=host.now(),
                engine=host.name, lateness=host.lateness, precomputed=host.precomputed,
            )  # fmt: skip
            host.commit(ready, result)
        if not waiting:
            return
        items = [
            i for i in items if i.partition in waiting and i.offset >= waiting[i.partition].offset
        ]
        if not host.seal_for(waiting):
            host.hold(waiting)
            return
