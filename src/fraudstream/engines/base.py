"""What every engine is and shares: the protocol the CLI and tests drive, the statistics it
keeps, the model it scores with (switched without a restart), its rules and name, and the
registry that maps ``engine.kind`` to a class imported only when chosen."""

from __future__ import annotations

import gc
import importlib
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
import psycopg
from confluent_kafka import Producer
from psycopg.pq import TransactionStatus

from fraudstream.bus.alerts import publish_alerts
from fraudstream.bus.deadletter import dead_letter
from fraudstream.bus.replies import publish_rejections, publish_verdicts, reply_producer
from fraudstream.clock import Clock
from fraudstream.config import Settings
from fraudstream.engines.step import Decoded
from fraudstream.model.registry import Registry, RegistryError
from fraudstream.model.scoring import Scorer
from fraudstream.policy import RuleSet, default_rules, load_rules
from fraudstream.policy.rules import Exploration
from fraudstream.records import Rejected
from fraudstream.schema import Invalid
from fraudstream.store.lists import active_lists, lists_digest
from fraudstream.store.projections import Observed
from fraudstream.store.rulebook import published_versions, version_rules
from fraudstream.store.sink import Checkpoint, PredictionSink, StoredBatch, Unstorable
from fraudstream.telemetry import (
    ENGINE_ALERTS,
    ENGINE_CHECKPOINT_SECONDS,
    ENGINE_DECISIONS,
    ENGINE_END_TO_END,
    ENGINE_LAST_CHECKPOINT,
    ENGINE_TRANSACTIONS,
    count_dead_letters,
)

__all__ = [
    "ENGINES",
    "Engine",
    "EngineStats",
    "ModelHolder",
    "PolicyWatcher",
    "StepOutput",
    "StepWriter",
    "create_engine",
    "decision_rules",
    "engine_id",
    "tune_garbage_collector",
]

log = logging.getLogger("fraudstream.engine")

ENGINES: dict[str, tuple[str, str, str | None]] = {
    "local": ("fraudstream.engines.local", "LocalEngine", None),
    "spark": ("fraudstream.engines.spark", "SparkEngine", "pip install 'fraudstream[spark]'"),
}
"""engine.kind → (module, class, what installs its optional dependency)."""


@dataclass
class EngineStats:
    batches: int = 0
    scored: int = 0
    stored: int = 0
    rejected: int = 0  # dead-lettered, for any reason (replays and conflicts included)
    alerts: int = 0
    late: int = 0  # scored, but behind the partition's watermark: not counted for terminals
    replays: int = 0  # a tx_id seen before with identical content
    conflicts: int = 0  # a tx_id seen before with different content
    batch_ms: list[float] = field(default_factory=list)


class Engine(Protocol):
    name: str
    stats: EngineStats
    stop: threading.Event

    def run(self, max_idle_s: float | None = None) -> EngineStats:
        """Process until ``stop`` is set (or nothing arrives for ``max_idle_s``)."""
        ...


def tune_garbage_collector() -> None:
    """Collect cycles far less often, and never again look at what start-up made.

    A batch allocates tens of thousands of objects, so with Python's default thresholds the
    collector ran every few hundred rows and walked every live object each time (modules,
    the model, the card cache): over a third of the step's time when profiled in memory.
    Batches make few reference cycles; reference counting frees the rest as before.
    """
    gc.collect()
    gc.freeze()  # what exists now (modules, settings, the model) lives as long as the process
    gc.set_threshold(50_000, 20, 100)


def tune_thread_switching(interval_s: float = 0.001) -> None:
    """Let a thread waiting on I/O have the interpreter back sooner.

    The writer thread spends its batch in a dozen PostgreSQL round trips; after each, it
    waits for the main thread (scoring the next batch) to give up the interpreter lock, by
    default after 5 ms. Under load that wait, not the database, made most of a write's time,
    and a verdict waits for the write. A shorter slice costs a little switching overhead.
    """
    sys.setswitchinterval(interval_s)


def create_engine(
    kind: str, settings: Settings, clock: Clock, stop: threading.Event | None = None, **options: Any
) -> Engine:
    """The engine registered as ``kind``, its module imported only now."""
    if kind not in ENGINES:
        raise ValueError(f"engine.kind must be one of {', '.join(ENGINES)}, not {kind!r}")
    module_name, class_name, install = ENGINES[kind]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] == "fraudstream":
            raise  # our own code is broken: no extra would fix it
        hint = f": {install}" if install else ""
        raise RuntimeError(f"the {kind} engine needs {error.name}{hint}") from None
    engine: Engine = getattr(module, class_name)(settings, clock, stop, **options)
    return engine


class ModelHolder:
    """The model an engine scores with (the champion), and the challenger it scores in shadow
    beside it, switched when the registry's pointers change."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.scorer = Scorer(registry.load())
        self.challenger: Scorer | None = None
        self._refused: str | None = None  # a challenger that could not be loaded
        self._refresh_challenger()

    def refresh(self) -> bool:
        """Load the registry's current model if it is another one; True when switched."""
        self._refresh_challenger()
        current = self.registry.current()
        if not current or current == self.scorer.version:
            return False
        self.scorer = Scorer(self.registry.load(current))
        log.info("switched to model %s", current)
        if self.challenger is not None and self.challenger.version == current:
            self.challenger = None
        return True

    def _refresh_challenger(self) -> None:
        wanted = self.registry.challenger()
        if wanted is None or wanted == self._refused:
            self.challenger = None
            return
        if self.challenger is not None and self.challenger.version == wanted:
            return
        try:
            self.challenger = Scorer(self.registry.load(wanted))
        except (RegistryError, OSError, ValueError) as error:  # the champion carries on alone
            self._refused, self.challenger = wanted, None
            log.warning("challenger %s not loaded: %s", wanted, error)
            return
        log.info("scoring challenger %s in shadow", wanted)


def decision_rules(
    settings: Settings, book: RuleSet | None = None, lists: dict[str, frozenset[str]] | None = None
) -> RuleSet:
    """The rules that decide: the rule book's published ``book`` when there is one, else the
    operator's rules file when one is set, else the built-in rules; with the live ``lists``
    in force and ``policy.explore_share``'s exploration. The version says all of it
    (``book-7+lists-1a2b3c4d+explore0.05``)."""
    policy = settings.policy
    rules = book or (load_rules(policy.rules_file) if policy.rules_file else default_rules())
    version = rules.version
    if lists:
        version += f"+lists-{lists_digest(lists)}"
    update: dict[str, Any] = {"lists": dict(lists or {})}
    if policy.explore_share > 0:
        update["explore"] = Exploration(
            share=policy.explore_share, max_amount=policy.explore_max_amount
        )
        version += f"+explore{policy.explore_share:g}"
    return rules.model_copy(update={**update, "version": version[:64]})


class PolicyWatcher:
    """The rules an engine (or the decision API) decides with, and the shadow rules it
    evaluates beside them: reloaded from the rule book and the live lists when either
    changed, so that a published version or a list entry takes effect without a restart."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings, self.clock = settings, clock
        self.rules = decision_rules(settings)
        self.shadow: RuleSet | None = None
        self._seen: tuple[object, ...] | None = None

    def refresh(self, conn: psycopg.Connection[Any]) -> bool:
        """Check the rule book and the lists (three small queries); True when they changed.
        Leaves ``conn`` as it found it: a transaction these reads opened is ended here (left
        open, it would turn the caller's next transaction into a savepoint, never committed)."""
        opened = not conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE
        try:
            versions = published_versions(conn)
            live, shadow = versions.get("live"), versions.get("shadow")
            lists = active_lists(conn, self.clock.now())
            seen = (live, shadow, lists_digest(lists) if lists else None)
            if seen == self._seen:
                return False
            book = None if live is None else version_rules(conn, live)
            shadowed = None if shadow is None else version_rules(conn, shadow)
        finally:
            if opened:
                conn.rollback()  # (only reads)
        self._seen = seen
        self.rules = decision_rules(self.settings, book, lists)
        self.shadow = None if shadowed is None else decision_rules(self.settings, shadowed, lists)
        log.info(
            "deciding with rules %s%s", self.rules.version,
            "" if self.shadow is None else f"; rules {self.shadow.version} in shadow",
        )  # fmt: skip
        return True


def engine_id(settings: Settings) -> str:
    """This process's name in ``engine_status``: configured, else host and pid."""
    return settings.engine.engine_id or f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class StepOutput:
    """What one step leaves to store and publish."""

    predictions: pd.DataFrame
    checkpoints: list[Checkpoint]
    rejected: list[Rejected]  # already on the dead-letter topic
    observed: Observed | None = None
    redelivered: frozenset[str] = frozenset()
    sources: dict[str, Decoded] = field(default_factory=dict)  # tx_id → its message


class StepWriter:
    """The sink contract, in order: (1) dead letters acknowledged by Kafka; (2) one PostgreSQL
    transaction with the predictions, their dashboard projections, the dead letters' records,
    the offsets, watermarks and card state; (3) alerts, for the rows stored by their own
    message (inserted now, or before a crash), never for an absorbed duplicate. The verdicts
    the decision API waits for leave before (2), as soon as the step has decided: a crash
    before the commit makes the next owner decide the same records again, with the model and
    rules pinned for their partitions (``store/pins.py``, docs/adr/0007)."""

    def __init__(self, settings: Settings, producer: Producer, stats: EngineStats) -> None:
        self.settings, self.producer, self.stats = settings, producer, stats
        self.replies = reply_producer(settings.kafka)

    def answer(self, predictions: pd.DataFrame, items: list[Decoded]) -> None:
        """Send the decided rows' verdicts to the API processes waiting for them."""
        asked = {
            item.record.tx_id: item.reply_to
            for item in items
            if item.reply_to and not isinstance(item.record, Invalid)
        }
        if asked:
            publish_verdicts(self.replies, self.settings.kafka.topics.decisions, predictions, asked)

    def answer_rejected(self, rejected: list[Rejected], items: list[Decoded]) -> None:
        """Tell the API processes waiting for dead-lettered records why (after the letters
        are acknowledged: a replay or a conflict is final)."""
        if not rejected:
            return
        asked = {(i.partition, i.offset): i.reply_to for i in items if i.reply_to}
        if asked:
            publish_rejections(self.replies, self.settings.kafka.topics.decisions, rejected, asked)

    def dead_letter(self, rejected: list[Rejected]) -> list[Rejected]:
        """Send ``rejected`` to the dead-letter topic; returns them as ``dlq_events`` keeps
        them (reasons extended for those Kafka refused even as an excerpt)."""
        if not rejected:
            return []
        refused = dead_letter(
            self.producer, self.settings.kafka.topics.dlq, rejected,
            max_message_bytes=self.settings.kafka.max_message_bytes,
        )  # fmt: skip
        count_dead_letters("transactions", [r.reason for r in rejected])
        extended = {(r.partition, r.offset): r for r in refused}
        return [extended.get((r.partition, r.offset), r) for r in rejected]

    def write(self, sink: PredictionSink, output: StepOutput) -> StoredBatch:
        started = time.perf_counter()
        try:
            result = sink.write(
                output.predictions, output.checkpoints, output.rejected, output.observed
            )
        except Unstorable as error:
            result = self._write_storable(sink, output, error.rows)
        if any(c.snapshot is not None for c in output.checkpoints):
            ENGINE_CHECKPOINT_SECONDS.observe(time.perf_counter() - started)
            ENGINE_LAST_CHECKPOINT.set_to_current_time()
        predictions = output.predictions
        tx_ids = predictions["tx_id"].tolist()
        inserted = _among(tx_ids, result.inserted_ids)
        alerted = _rows_of(
            predictions,
            inserted | _among(tx_ids, output.redelivered) if output.redelivered else inserted,
        )
        count_stored(_rows_of(predictions, inserted))
        alerts = publish_alerts(self.producer, self.settings.kafka.topics.alerts, alerted)
        self.stats.alerts += alerts
        ENGINE_ALERTS.inc(alerts)
        return result

    def _write_storable(
        self, sink: PredictionSink, output: StepOutput, rows: list[tuple[int, str]]
    ) -> StoredBatch:
        """The step without the rows PostgreSQL refused, which are dead-lettered instead;
        with no such row, the projections were refused: stored without them."""
        if not rows:
            log.warning("a step's dashboard projections were refused; stored without them")
            return sink.write(output.predictions, output.checkpoints, output.rejected)
        predictions = output.predictions
        letters = [
            output.sources[str(predictions["tx_id"].iat[row])].rejected(reason)
            for row, reason in rows
        ]
        kept = self.dead_letter(letters)
        self.answer_rejected(
            kept, [output.sources[str(predictions["tx_id"].iat[r])] for r, _ in rows]
        )
        self.stats.rejected += len(letters)
        keep = np.setdiff1d(np.arange(len(predictions)), [row for row, _ in rows])
        output.predictions = predictions.iloc[keep].reset_index(drop=True)
        return sink.write(output.predictions, output.checkpoints, [*output.rejected, *kept])


def _among(tx_ids: list[str], ids: frozenset[str]) -> np.ndarray:
    """Which of ``tx_ids`` are in ``ids``: a set lookup each (pandas' ``isin`` on Arrow
    strings took 25 times as long, 5 % of the engine's time in a profile)."""
    return np.fromiter((tx_id in ids for tx_id in tx_ids), dtype=bool, count=len(tx_ids))


def _rows_of(frame: pd.DataFrame, mask: np.ndarray) -> pd.DataFrame:
    """``frame[mask]``, without the copy when every row is wanted (the usual case)."""
    return frame if mask.all() else frame[mask]


def count_stored(inserted: pd.DataFrame) -> None:
    """The metrics of the rows a write inserted (an absorbed replay was counted when it was
    first stored): how many, their decisions, Kafka append → stored."""
    if inserted.empty:
        return
    ENGINE_TRANSACTIONS.inc(len(inserted))
    decisions, counts = np.unique(inserted["decision"].to_numpy(dtype=object), return_counts=True)
    for decision, count in zip(decisions, counts, strict=True):
        ENGINE_DECISIONS.labels(str(decision)).inc(int(count))
    appended = inserted["kafka_time"].to_numpy(dtype="datetime64[us]")
    appended = appended[~np.isnat(appended)]
    if len(appended):
        now_us = time.time_ns() // 1_000
        ENGINE_END_TO_END.observe_many((now_us - appended.view(np.int64)) / 1e6)
