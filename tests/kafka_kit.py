"""Reading a topic back in tests: every partition from its start to its end, by assignment.

A consumer group would first have to join and be given partitions, and a drain that stops at
a deadline cannot tell a slow join from a lost message. Reading to the high watermarks needs
no group, waits on progress (the log's end), and says which partition fell short."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from fraudstream.config import Settings


def read_topic(
    settings: Settings, topic: str, *, at_least: int = 0, settle_s: float = 1.0,
    timeout_s: float = 120,
) -> list[Message]:  # fmt: skip
    """Every message of ``topic``, once its logs hold ``at_least`` messages.

    After that count is reached the logs are given ``settle_s`` more, so that a message
    written twice (which a test wants to see) is read too."""
    consumer = Consumer(
        {**settings.kafka.client_config(), "group.id": f"read-{uuid.uuid4().hex}",
         "enable.auto.commit": False, "enable.partition.eof": True,
         "fetch.max.bytes": 64 * 1024 * 1024}
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s
        ends = _log_ends(consumer, topic)
        while sum(high - low for low, high in ends.values()) < at_least:
            if time.monotonic() > deadline:
                held = sum(high - low for low, high in ends.values())
                raise AssertionError(f"{topic} holds {held} messages after {timeout_s:.0f} s, "
                                     f"not the {at_least} expected")  # fmt: skip
            time.sleep(0.2)
            ends = _log_ends(consumer, topic)
        if settle_s:
            time.sleep(settle_s)
            ends = _log_ends(consumer, topic)
        return _read_to(consumer, topic, ends, deadline)
    finally:
        consumer.close()


def _log_ends(consumer: Consumer, topic: str) -> dict[int, tuple[int, int]]:
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions
    }


def _read_to(
    consumer: Consumer, topic: str, ends: dict[int, tuple[int, int]], deadline: float
) -> list[Message]:
    unread = {p: (low, high) for p, (low, high) in ends.items() if high > low}
    consumer.assign([TopicPartition(topic, p, low) for p, (low, _high) in unread.items()])
    position = {p: low for p, (low, _high) in ends.items()}
    messages: list[Message] = []
    while any(position[p] < high for p, (_low, high) in ends.items()):
        if time.monotonic() > deadline:
            short = {p: f"{position[p]}/{high}" for p, (_l, high) in ends.items()
                     if position[p] < high}  # fmt: skip
            raise AssertionError(f"{topic}: partitions not read to their end: {short}")
        for message in consumer.consume(10_000, 0.5):
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:  # past any transaction marker
                    partition = int(message.partition() or 0)
                    position[partition] = max(position[partition], int(message.offset() or 0))
                    continue
                raise AssertionError(f"reading {topic}: {error}")
            partition, offset = int(message.partition() or 0), int(message.offset() or 0)
            if offset < ends[partition][1]:
                messages.append(message)
            position[partition] = max(position[partition], offset + 1)
    return messages
