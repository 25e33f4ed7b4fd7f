"""An analyst's verdict on the labels topic, beside the row the dashboard stored itself."""

from __future__ import annotations

from datetime import datetime

import msgspec
import streamlit as st
from confluent_kafka import KafkaError, Message, Producer

from fraudstream.config import Settings
from fraudstream.schema import Label

__all__ = ["publish_label"]


@st.cache_resource
def _producer(bootstrap: str) -> Producer:
    del bootstrap  # (the cache key)
    from fraudstream.dashboard.common import settings

    return Producer(
        {**settings().kafka.client_config(), "enable.idempotence": True, "log_level": 3}
    )


def publish_label(settings: Settings, tx_id: str, is_fraud: bool, at: datetime) -> str | None:
    """Publish the label (keyed by transaction); None when Kafka acknowledged it, else why not.
    The label is already stored, so a broker outage loses nothing the dashboard shows."""
    failures: list[KafkaError] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failures.append(error)

    label = Label(tx_id=tx_id, is_fraud=is_fraud, reported_at=at, source="analyst")
    producer = _producer(settings.kafka.bootstrap)
    producer.produce(
        settings.kafka.topics.labels,
        key=tx_id.encode(),
        value=msgspec.json.encode(label),
        on_delivery=delivered,
    )
    if producer.flush(5) or failures:
        return str(failures[0]) if failures else "Kafka did not answer within 5 s"
    return None
