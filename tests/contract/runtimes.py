"""Every runtime of the contract suite, reduced to one ``Outcome`` to check the same way."""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import shutil
import subprocess
import threading
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
from confluent_kafka import Producer

from fraudstream import bus
from fraudstream.clock import SystemClock
from fraudstream.config import Settings, TopicSettings
from fraudstream.engines.base import Engine, decision_rules
from fraudstream.engines.local import LocalEngine
from fraudstream.features import FEATURE_NAMES
from fraudstream.model.registry import Registry
from fraudstream.model.scoring import Scorer
from fraudstream.stack import Stack
from fraudstream.store.db import conninfo
from fraudstream.testing import MemoryMessage, MemoryRuntime

from ..api_kit import Client, create_key, start_api, stop_api, with_api
from ..engine_kit import isolated, start_engine, stop_engine, wait_for
from ..kafka_kit import read_topic
from .conftest import Stream


@dataclass
class Outcome:
    """What a runtime made of the stream."""

    rows: pd.DataFrame  # index tx_id: FEATURE_NAMES, score, decision, late
    dead_letters: list[tuple[str, str]]  # (source topic kind, reason)
    alerts: set[str]
    crashes: int = 0
    settings: Settings | None = None  # where a runtime with a database stored them

    def __post_init__(self) -> None:
        self.rows = (
            self.rows.astype({"score": float, "decision": object, "late": bool})
            .rename_axis("tx_id")
            .sort_index()
        )


def fresh_settings(
    stream: Stream, stack_settings: Settings, models: Path, **engine: object
) -> Settings:
    """The stream's input topics; this run's own database, group and output topics."""
    own = isolated(stack_settings, models, **engine)
    run = uuid.uuid4().hex[:6]
    topics = TopicSettings(
        transactions=stream.settings.kafka.topics.transactions,
        labels=stream.settings.kafka.topics.labels,
        alerts=f"al-{run}", dlq=f"dlq-{run}", labels_dlq=f"lbdlq-{run}",
        decisions=f"dec-{run}",
    )  # fmt: skip
    kafka = own.kafka.model_copy(update={"topics": topics})
    bus.ensure_topics(kafka)
    return own.model_copy(update={"kafka": kafka})


def outcome_from_database(settings: Settings, *, crashes: int = 0) -> Outcome:
    with psycopg.connect(conninfo(settings)) as conn:
        rows = conn.execute(
            "SELECT tx_id, features, score, decision, late FROM fraud_predictions"
        ).fetchall()
        letters = conn.execute("SELECT source_topic, reason FROM dlq_events").fetchall()
    frame = pd.DataFrame(
        [[*features, score, decision, late] for _, features, score, decision, late in rows],
        columns=[*FEATURE_NAMES, "score", "decision", "late"],
        index=[tx for tx, *_ in rows],
    )
    labels_topic = settings.kafka.topics.labels
    dead = [("labels" if t == labels_topic else "transactions", r) for t, r in letters]
    flagged = int((frame["decision"] != "approve").sum())
    alerts = {
        json.loads(m.value())["tx_id"]
        for m in read_topic(settings, settings.kafka.topics.alerts, at_least=flagged)
    }
    return Outcome(frame.sort_index(), dead, alerts, crashes, settings)


# --- the runtimes ----------------------------------------------------------------------------


def run_memory(stream: Stream, stack_settings: Settings, models: Path, *, seed: int) -> Outcome:
    """The in-memory runtime with random batch cuts, aborts (kill -9) and rebalances."""
    logs = {
        partition: [MemoryMessage(value, key, stamp) for key, value, stamp in messages]
        for partition, messages in stream.logs.items()
    }
    runtime = MemoryRuntime(
        logs, stream.label_log, scorer=Scorer(Registry(models).load()),
        rules=decision_rules(stack_settings), now=pd.Timestamp.now(tz="UTC").to_pydatetime(),
        lateness=timedelta_s(stack_settings.engine.allowed_lateness_s),
        batch_sizes=(1, 400), snapshot_every=4, seed=seed,
    )  # fmt: skip
    markers = {n: ("abort", "rebalance")[i % 2] for i, n in enumerate(range(3, 1000, 7))}
    runtime.run(markers)
    sink = runtime.sink
    frame = sink.frame()
    rows = pd.DataFrame(
        np.vstack(frame["features"].to_numpy()), columns=list(FEATURE_NAMES), index=frame.index
    ).assign(score=frame["score"], decision=frame["decision"], late=frame["late"])
    dead = [("transactions", letter.reason) for letter in sink.dead_letters.values()]
    dead += [("labels", reason) for reason in runtime.invalid_labels]
    assert runtime.applied.count("abort") >= 3 and runtime.applied.count("rebalance") >= 3
    return Outcome(rows.sort_index(), dead, set(sink.alerts), crashes=len(runtime.applied))


def timedelta_s(seconds: float):
    from datetime import timedelta

    return timedelta(seconds=seconds)


def run_local(
    stream: Stream, stack_settings: Settings, models: Path, *, batch: int, snapshot_s: float
) -> Outcome:
    """The local engine in this process, uninterrupted, until the stream is done."""
    settings = fresh_settings(
        stream, stack_settings, models, batch_max_messages=batch, snapshot_interval_s=snapshot_s
    )
    run_until_done(LocalEngine(settings, SystemClock()), settings, stream)
    return outcome_from_database(settings)


def run_until_done(engine: Engine, settings: Settings, stream: Stream) -> None:
    """Run ``engine`` in a thread until the whole stream is stored (waiting on progress, not
    on an idle time that a loaded machine could exceed), then stop it as SIGTERM would."""
    running = threading.Thread(target=engine.run, name=f"{engine.name}-engine")
    running.start()
    try:
        wait_for(
            lambda: _done(settings, stream) or not running.is_alive(), 600, "the stream stored"
        )
    finally:
        engine.stop.set()
        running.join(180)
    assert not running.is_alive(), "the engine did not stop within 180 s"
    assert _done(settings, stream), "the engine stopped before the stream was stored"


def _done(settings: Settings, stream: Stream) -> bool:
    expected_rows = len(stream.expected) + 1  # the late record is stored too
    expected_letters = len([h for h in stream.hostile if h.reason])
    with psycopg.connect(conninfo(settings)) as conn:
        rows = conn.execute("SELECT count(*) FROM fraud_predictions").fetchone()
        letters = conn.execute("SELECT count(*) FROM dlq_events").fetchone()
    return (rows, letters) == ((expected_rows,), (expected_letters,))


def _stored(settings: Settings) -> int:
    with psycopg.connect(conninfo(settings)) as conn:
        row = conn.execute("SELECT count(*) FROM fraud_predictions").fetchone()
    return int(row[0]) if row else 0


def run_local_killed(
    stream: Stream,
    stack_settings: Settings,
    models: Path,
    log: Path,
    *,
    kills: int,
    disk_lost_at: int | None = None,
) -> Outcome:
    """Engine processes killed with SIGKILL at points spread over the stream (waiting on
    stored progress, never on wall time), restarted each time, until the stream is done.
    After kill number ``disk_lost_at`` its card store on local disk is deleted too (the
    restart rebuilds it from PostgreSQL's checkpoints)."""
    settings = fresh_settings(
        stream, stack_settings, models, batch_max_messages=400, snapshot_interval_s=0.5
    )
    total = len(stream.expected)
    for k in range(kills):
        process = start_engine(settings, log)
        target = total * (k + 1) // (kills + 2)
        wait_for(lambda t=target: _stored(settings) >= t, 300, f"{target} rows stored")
        process.kill()
        process.wait(30)
        if k + 1 == disk_lost_at:
            cards = settings.state_dir / "cards" / settings.engine.group_id
            assert any(cards.rglob("CURRENT")), "no card store on disk to lose"
            shutil.rmtree(cards)
    process = start_engine(settings, log)
    wait_for(lambda: _done(settings, stream), 300, "the whole stream stored")
    stop_engine(process, log)
    return outcome_from_database(settings, crashes=kills)


def run_local_restarted(
    stream: Stream, stack_settings: Settings, models: Path, log: Path, *, service: str
) -> Outcome:
    """One engine process; a third of the way through the stream the broker or the database
    goes down under it, stays down until the engine has met the outage, and comes back."""
    settings = fresh_settings(
        stream, stack_settings, models, batch_max_messages=400, snapshot_interval_s=0.5
    )
    process = start_engine(settings, log)
    wait_for(lambda: _stored(settings) >= len(stream.expected) // 3, 300, "a third stored")
    target = getattr(Stack(stack_settings), service)
    met = log.read_text().count(_OUTAGE_SEEN[service])
    before = _stored(settings)
    assert target.stop(), f"the {service} was not running, or not the one this stack started"
    try:
        wait_for(lambda: log.read_text().count(_OUTAGE_SEEN[service]) > met, 120, "the outage")
        assert process.poll() is None, log.read_text()[-3000:]
    finally:
        target.start()
    wait_for(lambda: _done(settings, stream), 300, "the whole stream stored")
    stop_engine(process, log)
    assert before < len(stream.expected), "the stream was stored before the outage"
    return outcome_from_database(settings, crashes=1)


_OUTAGE_SEEN = {  # what the engine's log says once it has run into each outage
    "broker": "Connection refused",  # librdkafka, reconnecting
    "database": "recovering from the stored state",
}


def run_two_engines(stream: Stream, stack_settings: Settings, models: Path, log: Path) -> Outcome:
    """Two engine processes in one group (rebalances), one killed half-way; the survivor
    takes over its partitions."""
    settings = fresh_settings(
        stream, stack_settings, models, batch_max_messages=400, snapshot_interval_s=0.5
    )
    first, second = start_engine(settings, log), start_engine(settings, log)
    wait_for(lambda: _stored(settings) >= len(stream.expected) // 2, 300, "half the stream")
    second.kill()
    second.wait(30)
    wait_for(lambda: _done(settings, stream), 300, "the whole stream stored")
    stop_engine(first, log)
    assert isinstance(first, subprocess.Popen)
    return outcome_from_database(settings, crashes=1)


def run_api(stream: Stream, stack_settings: Settings, models: Path, log: Path) -> Outcome:
    """The stream again, into a topic of its own, with every transaction of one card in
    twenty sent through ``POST /v1/decisions`` (one request at a time, in log order) and the
    rest produced as they were: the rows must be the same as any other runtime's, and each
    full answer the stored decision."""
    settings = fresh_settings(
        stream, stack_settings, models, batch_max_messages=400, snapshot_interval_s=0.5
    )
    run = uuid.uuid4().hex[:6]
    topics = settings.kafka.topics.model_copy(update={"transactions": f"tx-api-{run}"})
    kafka = settings.kafka.model_copy(update={"topics": topics})
    bus.ensure_topics(kafka)
    # A budget far above any step: this run is about what is answered, not how fast.
    settings = with_api(settings.model_copy(update={"kafka": kafka}), budget_ms=5000)
    key = create_key(settings, "contract")
    engine, server = start_engine(settings, log), start_api(settings, log)
    client = Client(settings.api.port, key)
    producer = Producer(
        {**kafka.client_config(), "linger.ms": 5, "message.max.bytes": kafka.max_message_bytes}
    )
    answers: dict[str, dict[str, object]] = {}
    ordered = _in_event_order(stream.logs)
    hostile = {h.value for h in stream.hostile}  # produced as they were: the DLQ's to judge
    try:
        for card, value in ordered:
            if card is not None and zlib.crc32(card) % 20 == 0 and value not in hostile:
                assert producer.flush(30) == 0  # the log keeps the order it was sent in
                reply = client.post(value)
                if reply.status == 200:
                    answers[reply.body["tx_id"]] = reply.body
                continue
            producer.produce(topics.transactions, key=card, value=value)
        assert producer.flush(60) == 0
        wait_for(lambda: _done(settings, stream), 300, "the whole stream stored")
    finally:
        client.close()
        stop_api(server)
        stop_engine(engine, log)
    outcome = outcome_from_database(settings)
    full = {tx: a for tx, a in answers.items() if not a["degraded"]}
    assert len(full) > 500, len(full)  # the API's share of the stream
    for tx_id, answer in full.items():
        assert answer["score"] == outcome.rows.loc[tx_id, "score"], tx_id
        assert answer["decision"] == outcome.rows.loc[tx_id, "decision"], tx_id
    return outcome


def _in_event_order(
    logs: dict[int, list[tuple[bytes | None, bytes, int]]],
) -> list[tuple[bytes | None, bytes]]:
    """The partitions' messages merged as a live stream would interleave them: by event time
    (a message without one goes with the one before it), each partition in log order."""

    def keyed(partition: int) -> Iterator[tuple[str, int, int, bytes | None, bytes]]:
        newest = ""
        for offset, (key, value, _stamp) in enumerate(logs[partition]):
            # A hostile message keeps its place after its predecessor.
            with contextlib.suppress(ValueError, KeyError, TypeError):
                newest = max(newest, str(json.loads(value)["event_time"]))
            yield newest, partition, offset, key, value

    merged = heapq.merge(*(keyed(p) for p in sorted(logs)))
    return [(key, value) for _when, _p, _o, key, value in merged]


def run_spark(stream: Stream, stack_settings: Settings, models: Path, root: Path) -> Outcome:
    """The Spark engine on ``local[2]`` in micro-batches of a few thousand records."""
    settings = _spark_settings(stream, stack_settings, models, root)
    run_until_done(_spark_engine(settings), settings, stream)
    return outcome_from_database(settings)


def run_spark_broker_down(
    stream: Stream, stack_settings: Settings, models: Path, root: Path
) -> Outcome:
    """The Spark engine as ``run_spark``; a third of the way in the broker stops, longer than
    any Kafka call retries, until the driver has given the query up to the outage, and starts
    again: the query restarts from its checkpoint."""
    settings = _spark_settings(stream, stack_settings, models, root)
    engine = _spark_engine(settings)
    recoveries = _Counting("recovering from the checkpoint")
    logging.getLogger("fraudstream.engine").addHandler(recoveries)
    running = threading.Thread(target=engine.run, name="spark-engine")
    running.start()
    broker = Stack(stack_settings).broker
    try:
        wait_for(lambda: _stored(settings) >= len(stream.expected) // 3, 300, "a third stored")
        before = _stored(settings)
        assert broker.stop(), "the broker was not running, or not the one this stack started"
        try:
            wait_for(lambda: recoveries.count > 0 or not running.is_alive(), 180, "a recovery")
        finally:
            broker.start()
        wait_for(lambda: _done(settings, stream) or not running.is_alive(), 300, "the stream")
    finally:
        engine.stop.set()
        running.join(180)
        logging.getLogger("fraudstream.engine").removeHandler(recoveries)
    assert _done(settings, stream), "the engine stopped before the stream was stored"
    assert before < len(stream.expected), "the stream was stored before the outage"
    return outcome_from_database(settings, crashes=recoveries.count)


class _Counting(logging.Handler):
    """Counts the log records that contain ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.WARNING)
        self.text, self.count = text, 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += self.text in record.getMessage()


def _spark_settings(stream: Stream, stack_settings: Settings, models: Path, root: Path) -> Settings:
    settings = fresh_settings(stream, stack_settings, models)
    spark = settings.spark.model_copy(
        update={
            "checkpoint_dir": root / "checkpoints",
            "max_offsets_per_trigger": 4000,
            "trigger_interval_s": 0.5,
        }
    )
    return settings.model_copy(update={"spark": spark})


def _spark_engine(settings: Settings) -> Engine:
    from fraudstream.engines.spark import SparkEngine

    return SparkEngine(settings, SystemClock(), master="local[2]")
