"""Kafka clients as the engines use them: one producer configuration, patience with transient
errors, and the small accessors every consumer loop needs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from fraudstream.config import KafkaSettings

__all__ = [
    "FETCH_WAIT_MS",
    "engine_producer",
    "first_line",
    "message_offset",
    "message_partition",
    "offsets_client",
    "retry",
    "transient",
]

log = logging.getLogger("fraudstream.bus")

_T = TypeVar("_T")
_TRANSIENT = {  # what a broker restart or a leader election looks like from a client
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.BROKER_NOT_AVAILABLE,
    KafkaError.NETWORK_EXCEPTION,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
    # What the client itself says while a broker restarts. The first two each killed an
    # engine in the contract suite's broker restart: a partition listed a moment before not
    # known again yet (sealing a table), the handle of the old broker connection destroyed
    # under a call in flight (reading labels). The other three are the same moment seen by
    # the group coordinator, a node's address and its name lookup.
    KafkaError._UNKNOWN_PARTITION,
    KafkaError._DESTROY_BROKER,
    KafkaError._WAIT_COORD,
    KafkaError._NODE_UPDATE,
    KafkaError._RESOLVE,
}


def engine_producer(kafka: KafkaSettings) -> Producer:
    """The producer engines send dead letters and alerts with: idempotent, ``acks=all``, no
    delivery timeout (messages wait out a broker restart), and the topics' own size limit."""
    return Producer(
        {
            **kafka.client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "message.timeout.ms": 0,
            "message.max.bytes": kafka.max_message_bytes,
            "log_level": 3,
        }
    )


FETCH_WAIT_MS = 500
"""How long a consumer's fetch waits at the broker when there is nothing new (Kafka's
default). The broker answers at once when a record arrives, so a record waits no longer for
it; it sets how often an idle consumer asks. At 10 ms an idle engine's two consumers cost
the broker about 0.12 of a core here (200 empty fetches a second), seven times the engine's
own CPU while it waits; at 500 ms, about 0.015. What it can delay: a partition resumed or
sought while a fetch for the others is waiting joins the next fetch."""


def offsets_client(kafka: KafkaSettings, group: str) -> Consumer:
    """A client that only asks where logs end (never assigned, so it never fetches). A broker
    answers one request per connection at a time: asked through a consumer, such a query
    would queue behind that consumer's waiting fetch, for up to ``FETCH_WAIT_MS``."""
    return Consumer({**kafka.client_config(), "group.id": group, "log_level": 3})


def retry(call: Callable[[], _T], what: str, attempts: int = 10) -> _T:
    """Retry a Kafka call through transient errors (coordinator moving, broker restarting)."""
    delay = 0.2
    for attempt in range(attempts):
        try:
            return call()
        except KafkaException as error:
            if attempt == attempts - 1 or not transient(error):
                raise
            log.warning("%s: %s; retrying in %.1f s", what, error, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


def transient(error: KafkaException) -> bool:
    kafka_error = error.args[0]
    return bool(kafka_error.retriable() or kafka_error.code() in _TRANSIENT)


def message_partition(message: Message) -> int:
    return int(message.partition() or 0)


def message_offset(message: Message) -> int:
    return int(message.offset() or 0)


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
