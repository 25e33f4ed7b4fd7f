"""The contract suite's input: a realistic labelled stream on the real broker, with hostile
messages inside it, and what any runtime must make of it.

The stream is 32 days of a handbook-style population on 4 partitions, its fraud labels
reported days after the transactions (log-normal, up to 7 days) and published at their report
time between the transactions, as a bank receives them. Hostile messages are spread through
it: an oversized message, a NUL inside an id, a wrong type, not JSON, an identical replay of
an earlier transaction, the same tx_id with other content, a valid record 40 days older than
its neighbours, and three bad labels. The reference is computed offline, without any engine:
the training features of the whole history (``history_features``), their scores and the
policy's decisions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from fraudstream.config import Settings
from fraudstream.engines.base import decision_rules
from fraudstream.features import FEATURE_NAMES, history_features
from fraudstream.model.data import from_dataset
from fraudstream.model.registry import Registry
from fraudstream.model.scoring import Scorer
from fraudstream.policy import decide
from fraudstream.policy.expressions import TEXT_FIELDS
from fraudstream.schema import encode
from fraudstream.simulator.adapters import load_dataset
from fraudstream.simulator.generator import generate_blocks, preset
from fraudstream.simulator.history import write_history
from fraudstream.simulator.publish import LabelRows, TransactionRows

from ..engine_kit import isolated

pytest.register_assert_rewrite("tests.contract.runtimes")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/contract" in str(item.path):
            item.add_marker(pytest.mark.integration)  # the real broker and database


STREAM_DAYS = 32


@dataclass(frozen=True)
class Hostile:
    """One hostile message and the reason it must be dead-lettered with (None: a valid
    record that must be stored, flagged late)."""

    name: str
    topic: str  # "transactions" or "labels"
    key: bytes | None
    value: bytes
    reason: str | None


@dataclass(frozen=True)
class Stream:
    settings: Settings  # the topics holding the stream (engines add their own database)
    expected: pd.DataFrame  # index tx_id: FEATURE_NAMES, score, decision
    hostile: list[Hostile]
    late_tx_id: str
    transactions: int  # stream transactions published (without the hostile ones)
    labels: int
    logs: dict[int, list[tuple[bytes | None, bytes, int]]]  # the transactions topic read back
    label_log: list[bytes]


def _hostile(transactions: pd.DataFrame, start: pd.Timestamp) -> list[Hostile]:
    rows = TransactionRows(transactions)
    first, second = rows.record(3), rows.record(5)
    template = json.loads(encode(first))
    conflicting = {**json.loads(encode(second)), "amount": json.loads(encode(second))["amount"] + 1}
    late = {
        **template,
        "tx_id": "late-record",
        "card_id": "card-late",
        "terminal_id": "terminal-late",
        "event_time": (start - timedelta(days=40)).isoformat(),
    }
    late.pop("customer_x", None), late.pop("customer_y", None)
    label = {"tx_id": first.tx_id, "is_fraud": True, "reported_at": start.isoformat(),
             "source": "bank"}  # fmt: skip
    oversized = json.dumps({**template, "channel": "x" * 1_040_000}).encode()
    return [
        Hostile("oversized", "transactions", b"big", oversized, "exceeds the 16384-byte limit"),
        Hostile(
            "NUL in an id",
            "transactions",
            b"nul",
            json.dumps({**template, "tx_id": "nul\u0000id"}).encode(),
            "NUL character",
        ),
        Hostile(
            "wrong type",
            "transactions",
            b"type",
            json.dumps({**template, "tx_id": "typed", "amount": "12"}).encode(),
            "Expected `float`, got `str`",
        ),
        Hostile("not JSON", "transactions", b"junk", b"{not json", "not valid JSON"),
        Hostile(
            "identical replay", "transactions", first.card_id.encode(), encode(first), "replay"
        ),
        Hostile(
            "same tx_id, other content",
            "transactions",
            second.card_id.encode(),
            json.dumps(conflicting).encode(),
            "duplicate tx_id with different content",
        ),
        Hostile("40 days late", "transactions", b"card-late", json.dumps(late).encode(), None),
        Hostile("label: not JSON", "labels", None, b"{broken", "not valid JSON"),
        Hostile(
            "label: NUL",
            "labels",
            None,
            json.dumps({**label, "tx_id": "a\u0000b"}).encode(),
            "NUL character",
        ),
        Hostile(
            "label: wrong type",
            "labels",
            None,
            json.dumps({**label, "is_fraud": "yes"}).encode(),
            "Expected `bool`",
        ),
    ]


def _read_back(settings: Settings, topic: str) -> dict[int, list[tuple[bytes | None, bytes, int]]]:
    """Every message of ``topic`` per partition, as a consumer sees them."""
    consumer = Consumer(
        {**settings.kafka.client_config(), "group.id": "contract-read-back",
         "enable.auto.commit": False, "fetch.max.bytes": 64 * 1024 * 1024}
    )  # fmt: skip
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    logs: dict[int, list[tuple[bytes | None, bytes, int]]] = {}
    for partition in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        consumer.assign([TopicPartition(topic, partition, low)])
        got: list[tuple[bytes | None, bytes, int]] = []
        while len(got) < high - low:
            for message in consumer.consume(10_000, 1.0):
                if not message.error():
                    got.append((message.key(), message.value() or b"", message.timestamp()[1]))
        logs[partition] = got
    consumer.close()
    return logs


@pytest.fixture(scope="session")
def stream(
    stack_settings: Settings, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stream]:
    params = preset("handbook", n_customers=250, n_terminals=500, days=STREAM_DAYS, seed=17)
    history = tmp_path_factory.mktemp("contract") / "stream.parquet"
    write_history(generate_blocks(params), history, params)
    dataset = load_dataset(history, tokenizer=None)
    frame, frauds = from_dataset(dataset)
    features = history_features(frame, frauds).set_axis(frame["tx_id"].to_numpy())
    scorer = Scorer(Registry(models_dir).load())
    scores = scorer.score(features)
    texts = {name: frame[name].to_numpy(dtype=object) for name in TEXT_FIELDS if name in frame}
    decisions = decide(
        scores, features, texts, scorer.thresholds, decision_rules(stack_settings),
    )  # fmt: skip
    expected = features.assign(score=scores, decision=decisions.decision)
    # The stream must exercise what the first round's tests could not see.
    assert (features["terminal_risk_7d_delayed"] > 0).sum() > 100
    assert (features["terminal_known_frauds_7d"] > 0).sum() > 100

    settings = isolated(stack_settings, models_dir)
    start = dataset.transactions["event_time"].min()
    hostile = _hostile(dataset.transactions, start)
    txs, labels = dataset.transactions, dataset.labels
    times = np.concatenate([
        txs["event_time"].to_numpy(dtype="datetime64[us]"),
        labels["reported_at"].to_numpy(dtype="datetime64[us]"),
    ])  # fmt: skip
    kinds = np.concatenate([np.zeros(len(txs), np.int8), np.ones(len(labels), np.int8)])
    order = np.lexsort((kinds, times))  # as `fraudstream replay` orders them
    spread = {int(len(order) * (i + 1) / (len(hostile) + 1)): h for i, h in enumerate(hostile)}
    producer = Producer({
        **settings.kafka.client_config(), "linger.ms": 5,
        "message.max.bytes": settings.kafka.max_message_bytes,
    })  # fmt: skip
    topics = settings.kafka.topics
    tx_rows, label_rows = TransactionRows(txs), LabelRows(labels)
    for position, index in enumerate(order):
        if position in spread:
            bad = spread[position]
            topic = topics.transactions if bad.topic == "transactions" else topics.labels
            producer.produce(topic, key=bad.key, value=bad.value)
        if index < len(txs):
            record = tx_rows.record(int(index))
            producer.produce(topics.transactions, key=record.card_id, value=encode(record))
        else:
            label = label_rows.record(int(index) - len(txs))
            producer.produce(topics.labels, key=label.card_id or label.tx_id, value=encode(label))
        if position % 5000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    logs = _read_back(settings, topics.transactions)
    label_log = [
        value for part in _read_back(settings, topics.labels).values() for _, value, _ in part
    ]
    yield Stream(settings, expected, hostile, "late-record", len(txs), len(labels), logs, label_log)


def feature_matrix(rows: pd.DataFrame) -> np.ndarray:
    return rows[list(FEATURE_NAMES)].to_numpy(dtype=float)
