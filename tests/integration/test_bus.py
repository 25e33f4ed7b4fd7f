"""Produce and consume through every topic of the real broker."""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from fraudstream.config import Settings


def test_topics_exist_with_the_configured_partition_count(stack_settings: Settings) -> None:
    admin = AdminClient(stack_settings.kafka.client_config())
    topics = admin.list_topics(timeout=10).topics
    for name in stack_settings.kafka.topics.all():
        assert name in topics
        assert len(topics[name].partitions) == stack_settings.kafka.partitions == 4


def test_produce_and_consume_through_every_topic(stack_settings: Settings) -> None:
    run = uuid.uuid4().hex[:8]
    producer = Producer(
        {**stack_settings.kafka.client_config(), "enable.idempotence": True, "acks": "all"}
    )
    sent: dict[str, list[tuple[str, str]]] = {}
    for topic in stack_settings.kafka.topics.all():
        sent[topic] = [(f"card-{i % 3}", f"{run}-{topic}-{i}") for i in range(30)]
        for key, value in sent[topic]:
            producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0

    for topic, messages in sent.items():
        consumer = Consumer(
            {
                **stack_settings.kafka.client_config(),
                "group.id": f"test-{run}-{topic}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([topic])
        received: list[tuple[str, str]] = []
        for _ in range(200):
            message = consumer.poll(0.2)
            if message is None or message.error():
                if len([r for r in received if r[1].startswith(run)]) == len(messages):
                    break
                continue
            received.append((message.key().decode(), message.value().decode()))
        consumer.close()
        mine = [(k, v) for k, v in received if v.startswith(run)]
        assert sorted(mine) == sorted(messages), topic
        for key in {k for k, _ in messages}:  # per-key order is preserved (same partition)
            assert [v for k, v in mine if k == key] == [v for k, v in messages if k == key]


def test_keys_route_to_a_stable_partition(stack_settings: Settings) -> None:
    producer = Producer(stack_settings.kafka.client_config())
    partitions: list[int] = []
    for _ in range(5):
        producer.produce(
            stack_settings.kafka.topics.transactions,
            key="card-stable",
            value=b"{}",
            on_delivery=lambda err, msg: partitions.append(msg.partition()),
        )
    producer.flush(30)
    assert len(set(partitions)) == 1
    consumer = Consumer({**stack_settings.kafka.client_config(), "group.id": "offsets-probe"})
    low, high = consumer.get_watermark_offsets(
        TopicPartition(stack_settings.kafka.topics.transactions, partitions[0]), timeout=10
    )
    consumer.close()
    assert high - low >= 5
