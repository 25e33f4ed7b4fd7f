"""The Kafka message bus as the rest of the system sees it: client settings, health, topics.

Works the same against the managed local broker and an external cluster.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from fraudstream.config import KafkaSettings

__all__ = ["BusError", "DeliveryError", "admin_client", "broker_ids", "ensure_topics", "ping"]


class BusError(RuntimeError):
    """The broker cannot be reached or refused an administrative request."""


class DeliveryError(RuntimeError):
    """Kafka did not accept some produced messages; the message says how many and why."""


def admin_client(kafka: KafkaSettings, **extra: Any) -> AdminClient:
    # log_level 3 keeps librdkafka quiet about the connection refusals we expect while polling.
    return AdminClient({**kafka.client_config(), "log_level": 3, **extra})


def broker_ids(kafka: KafkaSettings, timeout_s: float = 2.0) -> list[int]:
    """Ids of the brokers answering a metadata request; raises BusError when none does."""
    client = admin_client(kafka, log_level=0)
    try:
        metadata = client.list_topics(timeout=timeout_s)
    except KafkaException as error:
        raise BusError(f"no Kafka broker answered at {kafka.bootstrap}: {error}") from None
    return sorted(metadata.brokers)


def ping(kafka: KafkaSettings, timeout_s: float = 2.0) -> bool:
    try:
        return bool(broker_ids(kafka, timeout_s))
    except BusError:
        return False


def ensure_topics(kafka: KafkaSettings, timeout_s: float = 30.0) -> list[str]:
    """Create the system's topics that do not exist yet; returns the names created.

    Existing topics are left as they are (a partition count is never silently changed).
    """
    client = admin_client(kafka)
    existing = set(client.list_topics(timeout=timeout_s).topics)
    missing = [name for name in kafka.topics.all() if name not in existing]
    if not missing:
        return []
    # The broker stamps transactions on arrival, so end-to-end latency can be split into
    # "reached Kafka" and "stored in PostgreSQL".
    append_time = {"message.timestamp.type": "LogAppendTime"}
    # One size limit for every topic (and every producer: ``clients.producer_config``), so a
    # message the broker accepted can always be copied to a dead-letter topic.
    limit = {"max.message.bytes": str(kafka.max_message_bytes)}
    requests = [
        NewTopic(
            name,
            num_partitions=kafka.partitions,
            replication_factor=kafka.replication_factor,
            config={**limit, **(append_time if name == kafka.topics.transactions else {})},
        )
        for name in missing
    ]
    created = []
    for name, future in client.create_topics(requests, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            created.append(name)
        except KafkaException as error:
            if error.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise BusError(f"could not create topic {name!r}: {error}") from None
    return created
