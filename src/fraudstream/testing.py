"""A testing kit: the engine's pure core driven entirely in memory.

``MemoryRuntime`` reads partitioned logs of raw messages (as Kafka would hold them) and a
labels log, cuts them into batches of seeded random sizes, and runs the same ``drive`` /
``step`` code as the local engine against a ``MemorySink`` that keeps predictions, dead
letters, checkpoints, watermarks, card-state snapshots and sealed terminal tables. Markers in
the schedule abort the runtime (everything in memory lost; it restarts from the sink's last
snapshot, as after kill -9) or rebalance it (partitions handed to a fresh owner). Tests use
it to check determinism and poison handling without Kafka or PostgreSQL, and as one runtime
of the contract suite (``tests/contract``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from fraudstream.engines.step import Decoded, PartitionState, StepResult, drive, earliest_day
from fraudstream.features import CardState, TerminalActivity, TerminalTable
from fraudstream.features.watermarks import NO_WATERMARK, PartitionProgress, sealable
from fraudstream.model.scoring import Scorer
from fraudstream.policy import RuleSet
from fraudstream.records import Rejected, StoredId
from fraudstream.schema import Invalid, Label, decode_label, decode_transaction

__all__ = ["ABORT", "REBALANCE", "MemoryMessage", "MemoryRuntime", "MemorySink"]

ABORT = "abort"
"""Marker: the runtime dies (kill -9) before the step; it restarts from the last snapshot."""
REBALANCE = "rebalance"
"""Marker: every partition is revoked and assigned again (state restored from the sink)."""


@dataclass(frozen=True)
class MemoryMessage:
    value: bytes
    key: bytes | None = None
    timestamp_ms: int | None = None


@dataclass
class MemorySink:
    """What PostgreSQL holds for an engine, in memory: the first row stored per tx_id wins."""

    predictions: dict[str, dict[str, object]] = field(default_factory=dict)
    dead_letters: dict[tuple[str, int, int], Rejected] = field(default_factory=dict)
    checkpoints: dict[int, tuple[int, int]] = field(default_factory=dict)  # next offset, wm
    snapshots: dict[int, tuple[int, bytes, int]] = field(default_factory=dict)
    tables: dict[np.datetime64, TerminalTable] = field(default_factory=dict)
    labels: dict[tuple[str, str], tuple[Label, pd.Timestamp]] = field(default_factory=dict)
    alerts: list[str] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        """The stored predictions, one row per tx_id, sorted by tx_id."""
        return pd.DataFrame(list(self.predictions.values())).set_index("tx_id").sort_index()

    def store_labels(self, labels: list[Label]) -> None:
        """Labels with their ``known_at``, by the database's rule (migration 0006)."""
        sealed = max(self.tables, default=None)
        midnight = None if sealed is None else pd.Timestamp(sealed, tz="UTC")
        for label in labels:
            reported = pd.Timestamp(label.reported_at)
            known = reported
            if midnight is not None and reported <= midnight:
                known = midnight + pd.Timedelta(microseconds=1)
            self.labels.setdefault((label.tx_id, label.source), (label, known))

    def activity(self) -> TerminalActivity:
        """Terminal activity as ``store.outcomes.load_terminal_activity`` reads it."""
        activity = TerminalActivity()
        if not self.predictions:
            return activity
        rows = self.frame()
        counted = rows[~rows["late"].astype(bool)]
        activity.add_transactions(counted["terminal_id"], counted["event_time"])
        known: dict[str, pd.Timestamp] = {}
        for (tx_id, _source), (label, at) in self.labels.items():
            if label.is_fraud and tx_id in counted.index:
                known[tx_id] = min(known.get(tx_id, at), at)
        frauds = counted.loc[list(known)]
        activity.add_frauds(
            frauds["terminal_id"], frauds["event_time"], pd.Series(list(known.values()))
        )
        return activity


class MemoryRuntime:
    """One engine over in-memory logs, with the local engine's step, commit order and rules."""

    def __init__(
        self,
        transactions: Mapping[int, list[MemoryMessage]],
        labels: list[bytes],
        *,
        scorer: Scorer,
        rules: RuleSet,
        now: datetime,
        lateness: timedelta = timedelta(hours=1),
        batch_sizes: tuple[int, int] = (1, 500),
        snapshot_every: int = 3,
        seed: int = 0,
        topic: str = "transactions",
    ) -> None:
        self.log = {p: list(messages) for p, messages in transactions.items()}
        self.label_log = list(labels)
        self.scorer, self.rules, self.lateness = scorer, rules, lateness
        self.name = "memory"
        self.precomputed = None
        self.topic = topic
        self._now = now
        self._rng = random.Random(seed)  # noqa: S311 - a reproducible test schedule
        self.batch_sizes = batch_sizes
        self.snapshot_every = snapshot_every
        self.sink = MemorySink()
        self.partitions: dict[int, PartitionState] = {}
        self.position: dict[int, int] = {}
        self.blocked: set[int] = set()
        self.labels_read = 0
        self.invalid_labels: list[str] = []
        self.steps = 0
        self.applied: list[str] = []  # the markers met, in order
        self._restore()

    # --- the schedule ------------------------------------------------------------------

    def run(self, markers: Mapping[int, str] | None = None, max_steps: int = 1_000_000) -> None:
        """Consume every log to its end; ``markers`` maps a batch number to ``ABORT`` or
        ``REBALANCE``, applied before that batch."""
        markers = markers or {}
        batch = 0
        while batch < max_steps:
            if markers.get(batch) in (ABORT, REBALANCE):
                self.applied.append(markers[batch])
                self._restore()
            batch += 1
            unread = [
                p for p in self.log if p not in self.blocked and self.position[p] < len(self.log[p])
            ]
            if not unread:
                if not self.blocked:
                    return
                self._unblock(force=True)
                continue
            items = []
            for partition in self._rng.sample(unread, self._rng.randint(1, len(unread))):
                size = self._rng.randint(*self.batch_sizes)
                start = self.position[partition]
                for offset in range(start, min(start + size, len(self.log[partition]))):
                    items.append(self._decoded(partition, offset))
                self.position[partition] = min(start + size, len(self.log[partition]))
            drive(items, self)
            self._unblock()
        raise AssertionError(f"not done after {max_steps} batches")

    def _decoded(self, partition: int, offset: int) -> Decoded:
        message = self.log[partition][offset]
        return Decoded(
            self.topic, partition, offset, message.key, message.value, message.timestamp_ms,
            decode_transaction(message.value, now=self._now),
        )  # fmt: skip

    def _restore(self) -> None:
        """Everything in memory lost; state and positions from the sink's snapshots."""
        self.partitions, self.position, self.blocked = {}, {}, set()
        for partition in self.log:
            offset, blob, watermark = self.sink.snapshots.get(
                partition, (0, CardState().to_bytes(), int(NO_WATERMARK))
            )
            self.partitions[partition] = PartitionState(CardState.from_bytes(blob), watermark)
            self.position[partition] = offset

    def _unblock(self, force: bool = False) -> None:
        if self.blocked and (force or self._rng.random() < 0.5):
            self.blocked = set()  # read again from where each waits; blocks again if need be

    # --- StepHost --------------------------------------------------------------------

    def now(self) -> datetime:
        return self._now

    def tables_for(self, days: set[np.datetime64]) -> dict[np.datetime64, TerminalTable]:
        return {day: self.sink.tables[day] for day in days if day in self.sink.tables}

    def stored_ids(self, tx_ids: list[str]) -> Mapping[str, StoredId]:
        found = {}
        for tx_id in tx_ids:
            row = self.sink.predictions.get(tx_id)
            if row is not None:
                digest, partition, offset = (
                    row["content_hash"],
                    row["kafka_partition"],
                    row["kafka_offset"],
                )
                found[tx_id] = StoredId(int(digest), int(partition), int(offset))  # type: ignore[call-overload]
        return found

    def seal_for(self, waiting: dict[int, Decoded]) -> bool:
        for partition, item in waiting.items():
            offset, watermark = self.sink.checkpoints.get(
                partition, (item.offset, int(NO_WATERMARK))
            )
            stamp = int(pd.Timestamp(item.record.event_time).value // 1000)  # type: ignore[union-attr]
            self.sink.checkpoints[partition] = (offset, max(watermark, stamp))
        day = earliest_day(waiting)
        progress = {
            p: PartitionProgress(*self.sink.checkpoints.get(p, (0, int(NO_WATERMARK))), len(log))
            for p, log in self.log.items()
        }
        ready, _idle = sealable(day, progress, self.lateness)
        if not ready:
            return False
        self._read_labels()
        self.sink.tables[day] = self.sink.activity().table(day)
        return True

    def _read_labels(self) -> None:
        """The whole labels log (it is all there): the memory equivalent of reading to the
        end; invalid labels are dead-lettered."""
        labels = []
        for offset in range(self.labels_read, len(self.label_log)):
            label = decode_label(self.label_log[offset])
            if isinstance(label, Invalid):
                self.invalid_labels.append(label.reason)
            else:
                labels.append(label)
        self.labels_read = len(self.label_log)
        self.sink.store_labels(labels)

    def hold(self, waiting: dict[int, Decoded]) -> None:
        for partition, item in waiting.items():
            self.position[partition] = item.offset
            self.blocked.add(partition)

    def commit(self, items: list[Decoded], result: StepResult) -> None:
        self.steps += 1
        for letter in result.rejected:
            self.sink.dead_letters.setdefault(
                (letter.topic, letter.partition, letter.offset), letter
            )
        inserted = set()
        for row in result.predictions.to_dict("records"):
            if row["tx_id"] not in self.sink.predictions:
                self.sink.predictions[row["tx_id"]] = row
                inserted.add(row["tx_id"])
        alerted = inserted | result.redelivered
        self.sink.alerts += [
            row["tx_id"] for row in result.predictions.to_dict("records")
            if row["decision"] != "approve" and row["tx_id"] in alerted
        ]  # fmt: skip
        for partition in {item.partition for item in items}:
            next_offset = max(i.offset for i in items if i.partition == partition) + 1
            state = self.partitions[partition]
            old = self.sink.checkpoints.get(partition, (0, int(NO_WATERMARK)))
            self.sink.checkpoints[partition] = (next_offset, max(old[1], state.watermark))
            if self.steps % self.snapshot_every == 0:
                self.sink.snapshots[partition] = (
                    next_offset,
                    state.cards.to_bytes(),
                    state.watermark,
                )
