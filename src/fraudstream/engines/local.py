"""The local engine: a Kafka consumer-group application scoring vectorised micro-batches.

Per batch: decode and validate, then the pure step (``engines/step.py``) with the terminal
tables the batch's days need, fetched or sealed first (``engines/terminals.py``); a
partition whose next record needs a table that may not be sealed yet waits (paused) until the
other partitions' watermarks allow it. Then one PostgreSQL transaction with the predictions,
the dead letters' records, the consumed offsets and watermarks and (periodically) each
partition's card-state checkpoint, the rows appended since the last one; alerts are produced
after the commit, for rows this engine inserted (or inserted before a crash from the same
message). Card histories live on local disk (``engines/card_store.py``), which holds the
last committed checkpoint. On every partition assignment the engine brings that disk up to
the checkpoint stored in PostgreSQL and seeks to its offset; the replayed messages give the
same rows, which the primary key absorbs.

Commit order per batch (the sink contract): dead letters acknowledged by Kafka → predictions,
projections, offsets, watermarks and card changes in one PostgreSQL transaction → alerts.
Once that transaction is known committed, the cards of a checkpoint it carried go to disk.
The verdicts the decision API waits for leave as soon as a step has decided, before its
commit. So each partition's model and rules are pinned in PostgreSQL before the engine decides
anything of it with them, and a restarted engine decides what it may have answered (the
records before each partition's log end at assignment) with the pinned ones (docs/adr/0007).

The PostgreSQL write of a batch runs on a writer thread while the next batch is decoded and
scored (one batch in flight), so the database and the Python work overlap. When the database
or the broker fails, the engine drops what is in flight, waits with backoff until they answer
again, and resumes from what PostgreSQL recorded: the same recovery as after a crash.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import psycopg
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from fraudstream.bus.clients import (
    FETCH_WAIT_MS,
    engine_producer,
    first_line,
    message_offset,
    message_partition,
    offsets_client,
    transient,
)
from fraudstream.bus.deadletter import DeadLetterError
from fraudstream.bus.replies import reply_to
from fraudstream.clock import Clock
from fraudstream.config import Settings
from fraudstream.engines.base import (
    EngineStats,
    ModelHolder,
    PolicyWatcher,
    StepOutput,
    StepWriter,
    engine_id,
)
from fraudstream.engines.card_store import DiskCardState, StoredCards, open_cards
from fraudstream.engines.scoring import observed
from fraudstream.engines.step import (
    Decoded,
    PartitionState,
    StepResult,
    drive,
    late_after_seal,
)
from fraudstream.engines.terminals import LabelReader, TerminalTables
from fraudstream.features import FEATURES_VERSION, TerminalTable
from fraudstream.features.definitions import CARD_STATE_TTL
from fraudstream.features.watermarks import NO_WATERMARK
from fraudstream.model.lifecycle import rollback_if_below_floor
from fraudstream.model.registry import Registry, RegistryError
from fraudstream.model.scoring import Scorer
from fraudstream.policy import RuleSet
from fraudstream.records import StoredId
from fraudstream.schema import Transaction, decode_transaction
from fraudstream.store import pins
from fraudstream.store.db import engine_connect
from fraudstream.store.quality import refresh_quality
from fraudstream.store.sink import (
    Checkpoint,
    PredictionSink,
    Snapshot,
    StoredBatch,
    step_lookups,
)
from fraudstream.store.status import StatusReporter
from fraudstream.telemetry import (
    ENGINE_BATCH_SECONDS,
    ENGINE_CARDS,
    ENGINE_INFO,
    ENGINE_LATE,
    ENGINE_STATE_BYTES,
    show_lag,
    show_model,
)

__all__ = ["EngineStats", "LocalEngine"]


log = logging.getLogger("fraudstream.engine")

_BACKOFF_S = (0.5, 10.0)  # first and longest wait between reconnection attempts
_CHANGES_MAX_ROWS = 500_000  # a partition checkpoints at least this often (bounded memory)
_EXPIRE_EVERY_S = 300.0  # how often idle cards are forgotten (a pass over every card)
_BLOCKED_RETRY_S = 0.2  # how often a waiting partition asks whether its table can be sealed
_LABELS_EVERY_S = 5.0  # how often labels are read into PostgreSQL besides sealing tables
_REALIGN_EVERY_S = 1.0  # how often consumer positions are checked against the state


class _InFlight:
    """The tx_ids of the batch the writer is storing, and where each came from: looked up
    for every record of the next steps, built once per batch without a Python object per
    row (a ``StoredId`` is made only for a tx_id asked about)."""

    def __init__(self, predictions: pd.DataFrame | None = None) -> None:
        if predictions is None or not len(predictions):
            self.rows: dict[str, int] = {}
            return
        self.rows = dict(zip(predictions["tx_id"].tolist(), range(len(predictions)), strict=True))
        self.digests = predictions["content_hash"].to_numpy()
        self.partitions = predictions["kafka_partition"].to_numpy()
        self.offsets = predictions["kafka_offset"].to_numpy()

    def get(self, tx_id: str) -> StoredId | None:
        row = self.rows.get(tx_id)
        if row is None:
            return None
        return StoredId(int(self.digests[row]), int(self.partitions[row]), int(self.offsets[row]))


class Unavailable(Exception):
    """PostgreSQL or Kafka did not answer; the engine recovers from its stored state."""


class LocalEngine:
    name = "local"

    def __init__(
        self, settings: Settings, clock: Clock, stop: threading.Event | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.stop = stop or threading.Event()
        self.topic = settings.kafka.topics.transactions
        self.group = settings.engine.group_id
        self.engine_id = engine_id(settings)
        self.lateness = timedelta(seconds=settings.engine.allowed_lateness_s)
        self.precomputed = None  # card features are computed here, from self.partitions
        self.models = ModelHolder(Registry(settings.models_dir))
        self.conn = engine_connect(settings)  # the main thread's: tables, labels, status
        # The reads of every step (stored ids, the newest sealed table) in autocommit: one
        # round trip each instead of three (BEGIN, the query, COMMIT). Pins too (a
        # transaction of their own, whatever the main connection has open).
        self.lookups = engine_connect(settings, autocommit=True)
        self.policy = PolicyWatcher(settings, clock)
        self.policy.refresh(self.conn)
        # Partitions whose records up to ``_replay_until`` are decided with the model and
        # rules pinned for them before a restart, not the current ones (``_restore``).
        self._pinned: dict[int, tuple[Scorer, RuleSet]] = {}
        self._replay_until: dict[int, int] = {}
        self._deciding: tuple[Scorer, RuleSet] | None = None  # a pinned policy, while used
        self.sink = PredictionSink(
            engine_connect(settings), consumer_group=self.group, features_version=FEATURES_VERSION
        )  # the writer thread's
        self.owned: list[int] = []  # partitions assigned to this engine
        self.partitions: dict[int, PartitionState] = {}  # restored and being scored
        self.expected: dict[int, int | None] = {}  # next offset each partition's state needs
        self.snapshot_due: dict[int, float] = {}
        self._snapshot_phase: dict[int, float] = {}  # a partition's offset in the interval
        self._taken: dict[int, Snapshot] = {}  # snapshots taken, written with the next step
        self._written: list[tuple[int, int]] = []  # (partition, sequence) in the batch in flight
        self.blocked: dict[int, np.datetime64] = {}  # partition → day whose table it waits for
        self.stats = EngineStats()
        ENGINE_INFO.labels(self.name).set(1)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink")
        self._in_flight: Future[StoredBatch] | None = None
        self._unstored = _InFlight()  # the rows of the batch in flight
        self._broken = False  # a failure left the in-memory state ahead of the database
        self.consumer = Consumer(
            {
                **settings.kafka.client_config(),
                "group.id": self.group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "range",
                "max.poll.interval.ms": 300_000,
                "session.timeout.ms": 10_000,
                "fetch.wait.max.ms": FETCH_WAIT_MS,
                "log_level": 3,
            }
        )
        self.offsets = offsets_client(settings.kafka, self.group)
        self.producer = engine_producer(settings.kafka)
        self.writer = StepWriter(settings, self.producer, self.stats)
        self.labels = LabelReader(settings, self.group, self.producer)
        self.tables = TerminalTables(
            self.labels, lateness=self.lateness, built_by=self.engine_id, group=self.group,
            topic=self.topic, log_ends=self.offsets,
            connect=functools.partial(engine_connect, settings),
        )  # fmt: skip
        self._model_checked = 0.0
        self._rules_checked = time.monotonic()
        self._status_written = 0.0
        self._quality_checked = time.monotonic()  # not in the first minutes of a (re)start
        self._expired_at = time.monotonic()
        self._labels_read = 0.0
        self._realigned = time.monotonic()
        self._blocked_retry = 0.0
        self._newest = pd.Timestamp(0, tz="UTC")  # the newest event time scored
        self._newest_sealed: np.datetime64 | None = None  # as read with the step's stored ids
        self._reporter = StatusReporter(
            engine_id=self.engine_id, engine=self.name, group=self.group, started_at=clock.now()
        )

    @property
    def scorer(self) -> Scorer:
        return self.models.scorer if self._deciding is None else self._deciding[0]

    @property
    def rules(self) -> RuleSet:
        return self.policy.rules if self._deciding is None else self._deciding[1]

    # --- partitions --------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.owned = sorted(p.partition for p in partitions)
        try:
            offsets = self._restore()
        except (psycopg.Error, KafkaException, Unavailable) as error:
            # Scored from nowhere is worse than not scored: hold the partitions until the
            # database answers (the main loop recovers and resumes them).
            log.warning("could not restore partitions %s: %s", self.owned, error)
            self._broken = True
            consumer.assign(partitions)
            consumer.pause(partitions)
            return
        for partition in partitions:
            partition.offset = offsets[partition.partition]
        log.info("assigned %s", {p.partition: p.offset for p in partitions})
        self._status_written = 0.0  # report the new ownership at once
        consumer.assign(partitions)
        # librdkafka keeps a partition paused across a rebalance: one this engine held for a
        # terminal table before would never be read again.
        consumer.resume(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("revoked %s", sorted(p.partition for p in partitions))
        try:
            self._wait_written()  # the next owner resumes from what is committed
        except Exception as error:  # not committed: the next owner scores the batch again
            log.warning("batch in flight at revocation not stored: %s", error)
        self._close_cards()
        self.owned, self.partitions, self.expected, self.snapshot_due = [], {}, {}, {}
        self.blocked, self._taken = {}, {}
        consumer.unassign()

    def _restore(self) -> dict[int, int]:
        """Card state, watermark and resume offset of every owned partition: the card store
        on local disk brought up to the last checkpoint stored in PostgreSQL."""
        self._close_cards()
        stored = self.sink.card_states(self.topic)
        offsets = {}
        self.partitions, self.expected, self.snapshot_due, self.blocked = {}, {}, {}, {}
        self._taken, self._written = {}, []
        cache_bytes = self.settings.engine.card_cache_mib * 2**20 // max(len(self.owned), 1)
        for partition in self.owned:
            state = stored.get(partition)
            if state is None:  # nothing stored for this feature set: from the beginning
                self.sink.forget_card_state(self.topic, partition)
            cards = open_cards(
                self.settings.state_dir / "cards" / self.group / self.topic / str(partition),
                StoredCards(
                    0 if state is None else state.sequence,
                    None if state is None else state.base,
                    functools.partial(self.sink.card_changes, self.topic, partition),
                ),
                cache_bytes=cache_bytes,
                features_version=FEATURES_VERSION,
            )
            watermark = None if state is None else state.watermark
            self.partitions[partition] = PartitionState(
                cards, int(NO_WATERMARK) if watermark is None else watermark
            )
            offsets[partition] = OFFSET_BEGINNING if state is None else state.next_offset
            self.expected[partition] = None if state is None else state.next_offset
            self.snapshot_due[partition] = 0.0  # snapshot at the first batch
        # Then spread over the interval: a snapshot stops the loop in proportion to its cards
        # (``take``, ``persist``), and all partitions at once made one long stall.
        owned = sorted(self.owned)
        self._snapshot_phase = {p: i / len(owned) for i, p in enumerate(owned)}
        self._restore_pins()
        return offsets

    def _restore_pins(self) -> None:
        """Decide again with the pinned model and rules what may have been answered before a
        restart: each owned partition pinned to another policy than the current one keeps its
        pinned policy up to its log end now (every record answered before is below it).
        Partitions never decided are pinned to the current policy before their first step."""
        stored = pins.pins(self.lookups, self.group, self.topic)
        self._pinned, self._replay_until = {}, {}
        current = (self.models.scorer.version, self.policy.rules.version)
        loaded: dict[pins.Pin, tuple[Scorer, RuleSet] | None] = {}
        repin = []
        for partition in self.owned:
            pinned = stored.get(partition)
            if pinned is None:
                repin.append(partition)
                continue
            if (pinned.model_version, pinned.rules_version) == current:
                continue
            if pinned not in loaded:
                loaded[pinned] = self._pinned_policy(pinned)
            policy = loaded[pinned]
            if policy is None:
                repin.append(partition)
                continue
            _low, high = self.offsets.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=5
            )
            self._pinned[partition], self._replay_until[partition] = policy, high
            log.info(
                "partition %d: deciding up to offset %d with its pinned model %s and rules %s",
                partition, high, pinned.model_version, pinned.rules_version,
            )  # fmt: skip
        self._pin(repin)

    def _pinned_policy(self, pinned: pins.Pin) -> tuple[Scorer, RuleSet] | None:
        """The pinned model and rules, or None (with a warning) when either is gone."""
        rules = pins.rule_set(self.lookups, pinned.rules_version)
        try:
            scorer = Scorer(self.models.registry.load(pinned.model_version))
        except (RegistryError, OSError, ValueError) as error:
            log.warning("pinned model %s not loaded: %s", pinned.model_version, error)
            return None
        if rules is None:
            log.warning("pinned rules %s are not stored", pinned.rules_version)
            return None
        return scorer, rules

    def _pin(self, partitions: list[int]) -> None:
        """Pin ``partitions`` to the current model and rules, once every step decided with
        the ones before is committed (a crash in between must not find the new pin)."""
        if not partitions:
            return
        self._wait_written()
        pins.pin(
            self.lookups, self.group, self.topic, sorted(partitions),
            self.models.scorer.version, self.policy.rules,
        )  # fmt: skip

    def _close_cards(self) -> None:
        for state in self.partitions.values():
            if isinstance(state.cards, DiskCardState):
                state.cards.close()
        self.partitions = {}

    # --- main loop -----------------------------------------------------------------------

    def run(self, max_idle_s: float | None = None) -> EngineStats:
        """Process batches until ``stop`` is set (or, once partitions are assigned, nothing
        arrives for ``max_idle_s`` while no partition waits for a terminal table)."""
        self.consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        idle_since = time.monotonic()
        try:
            while not self.stop.is_set():
                try:
                    if self._broken:
                        self._recover()
                        continue
                    messages = self._fetch()
                    usable = [m for m in messages if not m.error()]
                    for message in messages:
                        error = message.error()
                        if error is not None and error.code() != KafkaError._PARTITION_EOF:
                            log.warning("consumer error: %s", error)
                    if usable or not self.partitions or self.blocked:
                        if usable:
                            self.process(usable)
                        idle_since = time.monotonic()
                    elif max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                        break
                    self._housekeeping()
                except (
                    psycopg.OperationalError,
                    psycopg.InterfaceError,
                    Unavailable,
                    DeadLetterError,
                ) as error:
                    log.warning("%s; recovering from the stored state", first_line(error))
                    self._broken = True
                except KafkaException as error:
                    if not transient(error):
                        raise
                    log.warning("kafka: %s; recovering from the stored state", error)
                    self._broken = True
        finally:
            self.close()
        return self.stats

    def _fetch(self) -> list[Message]:
        """What has arrived, at once: a batch is whatever accumulated while the previous one
        was processed, so it is small when traffic is light (low latency) and grows up to
        ``engine.batch_max_messages`` under a backlog (throughput). Only when nothing is
        there does the engine wait, up to ``engine.batch_max_ms``, for the first message."""
        limit = self.settings.engine.batch_max_messages
        messages = self.consumer.consume(limit, 0)
        if messages:
            return messages
        messages = self.consumer.consume(1, self.settings.engine.batch_max_ms / 1000)
        if messages and limit > 1:
            messages += self.consumer.consume(limit - 1, 0)
        return messages

    def close(self) -> None:
        """Finish the batch in flight (it commits whole or not at all), then let go."""
        try:
            if not self._broken:
                self._wait_written()
        except Exception as error:
            log.warning("last batch not stored (it will be scored again): %s", error)
        self._writer.shutdown(wait=True)
        self.producer.flush(10)
        self.writer.replies.flush(1)
        self._close_cards()
        try:
            self.consumer.close()
            self.offsets.close()
            self.labels.close()
        finally:
            self.conn.close()
            self.lookups.close()
            self.sink.conn.close()

    def process(self, messages: list[Message]) -> None:
        """Decode ``messages`` and process them in steps: each step takes, per partition, the
        records whose terminal tables exist; a table that does not exist yet is sealed when
        the logs allow it, else its partition waits."""
        started = time.perf_counter()
        kept = self._contiguous(messages)
        if not kept:
            return
        now = self.clock.now()
        items = [
            Decoded(
                self.topic, partition, offset, message.key(), message.value() or b"",
                message.timestamp()[1] if message.timestamp()[1] > 0 else None,
                decode_transaction(message.value() or b"", now=now), reply_to(message),
            )
            for partition, offset, message in kept
        ]  # fmt: skip
        if self._pinned:
            items = self._replay(items)
        if items:
            drive(items, self)
        seconds = time.perf_counter() - started
        self.stats.batch_ms.append(seconds * 1000)
        ENGINE_BATCH_SECONDS.observe(seconds)
        del self.stats.batch_ms[:-1000]

    def _replay(self, items: list[Decoded]) -> list[Decoded]:
        """Decide the records of pinned partitions below their replay end with their pinned
        policy; partitions past it are pinned to the current policy. Returns the rest."""
        by_policy: dict[int, list[Decoded]] = {}  # id of a pinned policy → its records
        for item in items:
            if item.offset < self._replay_until.get(item.partition, -1):
                by_policy.setdefault(id(self._pinned[item.partition]), []).append(item)
        for group in by_policy.values():
            self._deciding = self._pinned[group[0].partition]
            try:
                drive(group, self)
            finally:
                self._deciding = None
        rest = [
            i for i in items
            if i.offset >= self._replay_until.get(i.partition, -1)
            and i.partition not in self.blocked
        ]  # fmt: skip
        done = sorted({i.partition for i in rest} & set(self._pinned))
        self._pin(done)
        for partition in done:
            del self._pinned[partition], self._replay_until[partition]
        return rest

    # --- what the pure step needs (engines/step.py: StepHost) ------------------------------

    def now(self) -> datetime:
        return self.clock.now()

    def tables_for(self, days: set[np.datetime64]) -> dict[np.datetime64, TerminalTable]:
        return self.tables.available(self.conn, days)

    def commit(self, items: list[Decoded], result: StepResult) -> None:
        """Dead letters acknowledged now; predictions, dead letters' records, offsets,
        watermarks and card state handed to the writer (one transaction), alerts after."""
        late = late_after_seal(result.predictions, self._newest_sealed)
        self.stats.late += late
        rejected = self.writer.dead_letter(result.rejected)
        self.writer.answer_rejected(rejected, items)
        seen = None
        if len(result.predictions):
            self.writer.answer(result.predictions, items)  # decided: the payment need not wait
            self._newest = max(self._newest, result.predictions["event_time"].max())
            seen = observed(
                result.batch, result.features, self.scorer, self.name,
                self.models.challenger, self.rules,
                shadow_rules=self.policy.shadow, scores=result.predictions["score"].to_numpy(),
            )  # fmt: skip
        next_offsets: dict[int, int] = {}
        for item in items:
            next_offsets[item.partition] = max(next_offsets.get(item.partition, 0), item.offset + 1)
        checkpoints, snapshotting = self._checkpoints(next_offsets)
        self._submit(
            StepOutput(
                result.predictions, checkpoints, rejected, observed=seen,
                redelivered=result.redelivered,
                sources={i.record.tx_id: i for i in items if isinstance(i.record, Transaction)},
            ),
            flush_alerts_first=snapshotting,
        )  # fmt: skip
        self.stats.batches += 1
        self.stats.scored += len(result.predictions)
        self.stats.rejected += len(result.rejected)
        self.stats.late += result.late
        ENGINE_LATE.inc(late + result.late)
        self.stats.replays += result.replays
        self.stats.conflicts += result.conflicts

    def stored_ids(self, tx_ids: list[str]) -> dict[str, StoredId]:
        """Which of ``tx_ids`` are stored (or in flight), from which message, with what
        content: what tells a replay or a reused id from a new transaction. The day of the
        newest sealed terminal table comes in the same round trip, for ``commit`` (read just
        before the step instead of just after it: either way another engine may seal in
        between, and ``late_after_seal`` is for records a seal has passed by days)."""
        if not tx_ids:  # nothing to score, so nothing for commit to mark late either
            self._newest_sealed = None
            return {}
        lookups = step_lookups(self.lookups, tx_ids)
        self._newest_sealed = lookups.newest_sealed
        found = lookups.stored
        for tx_id in tx_ids:
            in_flight = self._unstored.get(tx_id)
            if in_flight is not None:
                found.setdefault(tx_id, in_flight)
        return found

    # --- terminal tables -----------------------------------------------------------------

    def seal_for(self, waiting: dict[int, Decoded]) -> bool:
        """Store what is in flight, then seal the table the earliest waiting record needs if
        the logs allow it."""
        self._wait_written()
        return self.tables.seal_for(self.conn, waiting)

    def hold(self, waiting: dict[int, Decoded]) -> None:
        """Pause the waiting partitions at their first unprocessed record."""
        for partition, item in waiting.items():
            self.expected[partition] = item.offset
            self.blocked[partition] = item.day  # type: ignore[assignment]
        self.consumer.pause([TopicPartition(self.topic, p) for p in waiting])
        self._blocked_retry = time.monotonic() + _BLOCKED_RETRY_S
        log.info(
            "partitions %s wait for the terminal table of %s",
            sorted(waiting),
            min(self.blocked.values()),
        )

    def _unblock(self) -> None:
        """Resume the waiting partitions once the table they wait for can be sealed."""
        if not self.blocked or time.monotonic() < self._blocked_retry:
            return
        day = min(self.blocked.values())
        if self.tables.try_seal(self.conn, day) is None:
            self._blocked_retry = time.monotonic() + _BLOCKED_RETRY_S
            return
        waiting, self.blocked = self.blocked, {}
        # Resume, then seek: a seek on a paused partition is not reliably kept by librdkafka,
        # and the messages fetched while it waited were dropped.
        self.consumer.resume([TopicPartition(self.topic, p) for p in waiting])
        for partition in waiting:
            offset = self.expected[partition]
            assert offset is not None
            self.consumer.seek(TopicPartition(self.topic, partition, offset))

    def _realign(self) -> None:
        """Seek back any partition the consumer has read past where its state stands (its
        messages were dropped: fetched while it waited, or around a broker restart), so that
        no gap can wait for a message that will never come."""
        behind = {p: o for p, o in self.expected.items() if o is not None and p not in self.blocked}
        if not behind:
            return
        try:
            positions = self.consumer.position(
                [TopicPartition(self.topic, p) for p in sorted(behind)]
            )
        except KafkaException:
            return  # mid-rebalance: the assignment seeks
        for position in positions:
            expected = behind[position.partition]
            if position.offset >= 0 and position.offset > expected:
                log.warning(
                    "partition %d read to %d while its state stands at %d: reading again",
                    position.partition, position.offset, expected,
                )  # fmt: skip
                self.consumer.seek(TopicPartition(self.topic, position.partition, expected))

    # --- the writer thread ----------------------------------------------------------------

    def _submit(self, output: StepOutput, *, flush_alerts_first: bool) -> None:
        """Hand a step to the writer once the previous one is committed. A snapshot moves the
        replay point past earlier alerts: those are flushed first."""
        self._wait_written()
        self._unstored = _InFlight(output.predictions)
        self._written = [
            (c.partition, c.snapshot.sequence) for c in output.checkpoints if c.snapshot
        ]
        self._in_flight = self._writer.submit(self._write, output, flush_alerts_first)

    def _wait_written(self) -> None:
        """Wait for the batch in flight; its failure surfaces here, in the main thread."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            self.stats.stored += in_flight.result().inserted
            self._unstored = _InFlight()
            written, self._written = self._written, []
            for partition, sequence in written:  # committed: the cards go to disk
                cards = self.partitions[partition].cards
                assert isinstance(cards, DiskCardState)
                cards.persist(sequence, FEATURES_VERSION)

    def _write(self, output: StepOutput, flush_alerts_first: bool) -> StoredBatch:
        if flush_alerts_first and self.producer.flush(30):
            raise Unavailable("alerts of earlier batches not acknowledged by Kafka within 30 s")
        return self.writer.write(self.sink, output)

    # --- recovery ------------------------------------------------------------------------

    def _recover(self) -> None:
        """Drop what is in flight, wait for PostgreSQL and Kafka, resume from stored state."""
        in_flight, self._in_flight = self._in_flight, None
        self._unstored, self._written = _InFlight(), []
        if in_flight is not None:
            try:
                in_flight.result()  # committed or not, the stored state says which
            except Exception as error:
                log.info("batch in flight dropped: %s", first_line(error))
        delay = _BACKOFF_S[0]
        while not self.stop.is_set():
            try:
                self._reconnect()
                offsets = self._restore()
                for partition, offset in offsets.items():
                    if offset == OFFSET_BEGINNING:
                        low, _high = self.offsets.get_watermark_offsets(
                            TopicPartition(self.topic, partition), timeout=5
                        )
                        offset = low
                        self.expected[partition] = low
                    self.consumer.seek(TopicPartition(self.topic, partition, offset))
                self.consumer.resume([TopicPartition(self.topic, p) for p in self.owned])
                held = sorted(p.partition for p in self.consumer.assignment())
            except (psycopg.Error, KafkaException, Unavailable, DeadLetterError) as error:
                log.warning("still unavailable (%s); retrying in %.1f s", first_line(error), delay)
                self.stop.wait(delay)
                delay = min(delay * 2, _BACKOFF_S[1])
                continue
            self._broken = False
            log.info(
                "recovered: resuming partitions %s from the stored offsets (the consumer holds %s)",
                self.expected, held,
            )  # fmt: skip
            return

    def _reconnect(self) -> None:
        for conn in (self.conn, self.lookups, self.sink.conn):
            with contextlib.suppress(psycopg.Error):
                conn.close()
        self.conn = engine_connect(self.settings)
        self.lookups = engine_connect(self.settings, autocommit=True)
        self.sink = PredictionSink(
            engine_connect(self.settings),
            consumer_group=self.group,
            features_version=FEATURES_VERSION,
        )

    # --- steps ---------------------------------------------------------------------------

    def _contiguous(self, messages: list[Message]) -> list[tuple[int, int, Message]]:
        """Only messages that continue each owned partition exactly where its state stands.

        A rebalance can revoke a partition after its messages were fetched, or hand back
        messages fetched before the engine re-seeked to its snapshot: scoring those with this
        state would store wrong rows, so they are dropped and the partition re-seeked. A
        partition waiting for a terminal table reads again from where it waits once resumed.
        """
        kept = []
        for message in messages:
            partition, offset = message_partition(message), message_offset(message)
            if partition not in self.partitions or partition in self.blocked:
                continue
            expected = self.expected.get(partition)
            if expected is not None and offset != expected:
                if offset > expected:  # a gap: read again from where the state stands
                    try:
                        self.consumer.seek(TopicPartition(self.topic, partition, expected))
                    except KafkaException as error:  # mid-rebalance: the next assignment seeks
                        log.warning(
                            "could not seek partition %d to %d: %s", partition, expected, error
                        )
                continue
            self.expected[partition] = offset + 1
            kept.append((partition, offset, message))
        return kept

    def _checkpoints(self, next_offsets: dict[int, int]) -> tuple[list[Checkpoint], bool]:
        """Where each partition of the step now stands, and whether a snapshot goes with it.

        A snapshot is stored one step late: taken when due, it is written with the
        partition's next step, after every alert before it has been flushed. A crash can then
        only lose alerts of rows after the stored snapshot, which a restart replays (and
        alerts again), never alerts of rows before it."""
        now = time.monotonic()
        checkpoints = []
        snapshotting = False
        for partition, next_offset in sorted(next_offsets.items()):
            state = self.partitions[partition]
            ready = self._taken.pop(partition, None)
            snapshotting = snapshotting or ready is not None
            checkpoints.append(
                Checkpoint(self.topic, partition, next_offset, state.watermark, ready)
            )
            cards = state.cards
            assert isinstance(cards, DiskCardState)
            if (
                now >= self.snapshot_due.get(partition, 0.0)
                or len(cards.changes or ()) >= _CHANGES_MAX_ROWS
            ):
                sequence, changes, newest = cards.take()
                self._taken[partition] = Snapshot(
                    next_offset, state.watermark, changes, sequence, newest
                )
                interval = self.settings.engine.snapshot_interval_s
                phase = self._snapshot_phase.pop(partition, 0.0)
                self.snapshot_due[partition] = now + interval * (1.0 + phase)
        return checkpoints, snapshotting

    def _housekeeping(self) -> None:
        now = time.monotonic()
        self._unblock()
        if now - self._realigned >= _REALIGN_EVERY_S:
            self._realigned = now
            self._realign()
        if now - self._labels_read >= _LABELS_EVERY_S:
            self._labels_read = now
            self.labels.read(self.conn, timeout_s=1.0)  # for the dashboard; tables read their own
        switched = False
        if now - self._model_checked >= self.settings.engine.model_check_interval_s:
            self._model_checked = now
            switched = self.models.refresh()
        if now - self._rules_checked >= self.settings.engine.rules_check_interval_s:
            self._rules_checked = now
            switched = self.policy.refresh(self.conn) or switched
        if switched:  # pinned before the next step decides with it
            self._pin([p for p in self.partitions if p not in self._pinned])
        if now - self._status_written >= self.settings.engine.status_interval_s:
            self._status_written = now
            self._write_status()
        if now - self._expired_at >= _EXPIRE_EVERY_S:
            self._expired_at = now
            forgotten = sum(state.cards.expire_idle() for state in self.partitions.values())
            if forgotten:
                log.info("forgot %d cards idle for over %s", forgotten, CARD_STATE_TTL)
        if now - self._quality_checked >= self.settings.engine.quality_interval_s:
            self._quality_checked = now
            if self._newest.value > 0:
                measured = refresh_quality(
                    self.conn, self._newest.date(),
                    maturity_days=self.settings.engine.quality_maturity_days,
                )  # fmt: skip
                if measured:  # the one engine that measured judges the champion
                    rollback_if_below_floor(self.settings, self.conn)

    def _write_status(self) -> None:
        """Throughput since the last report, lag and batch times: to the log and the table,
        and the metrics that change only slowly."""
        lag = self._lag()
        self._reporter.report(
            self.conn, self.stats, model_version=self.scorer.version,
            partitions=sorted(self.partitions), lag=None if lag is None else sum(lag.values()),
        )  # fmt: skip
        challenger = self.models.challenger
        show_model(self.scorer.version, challenger.version if challenger else None)
        if lag is not None:
            show_lag(lag)
        stores = [s.cards for s in self.partitions.values() if isinstance(s.cards, DiskCardState)]
        ENGINE_CARDS.set(sum(len(cards) for cards in stores))
        ENGINE_STATE_BYTES.set(sum(cards.disk_bytes() for cards in stores))

    def _lag(self) -> dict[int, int] | None:
        """Messages behind the log end, per owned partition (the position's: the one read
        next), or None when the broker does not say."""
        try:
            assigned = self.consumer.assignment()
            positions = self.consumer.position(assigned)
            lag = {}
            for partition in positions:
                _low, high = self.consumer.get_watermark_offsets(partition, timeout=1, cached=True)
                if high is None or high < 0:  # not fetched since the assignment or a restart
                    return None
                start = partition.offset
                if start < 0:  # nothing read yet: from where the state stands
                    expected = self.expected.get(partition.partition)
                    start = high if expected is None else expected
                lag[partition.partition] = max(high - start, 0)
            return lag
        except Exception:  # lag is advisory; never stop scoring for it
            return None
