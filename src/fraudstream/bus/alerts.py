"""The alerts topic: review and decline decisions, keyed by card, for downstream systems."""

from __future__ import annotations

import msgspec
import pandas as pd
from confluent_kafka import Producer

from fraudstream.records import Alert

__all__ = ["publish_alerts"]

_encoder = msgspec.json.Encoder()


def publish_alerts(producer: Producer, topic: str, predictions: pd.DataFrame) -> int:
    """Review and decline rows of ``predictions`` to ``topic`` (at-least-once: consumers
    dedupe by ``tx_id``); returns how many."""
    flagged = predictions[predictions["decision"] != "approve"]
    for row in flagged.itertuples(index=False):
        alert = Alert(
            tx_id=row.tx_id, card_id=row.card_id, terminal_id=row.terminal_id,
            amount=float(row.amount), score=round(float(row.score), 6), decision=row.decision,
            rule_hits=list(row.rule_hits), reasons=list(row.reasons),
            model_version=row.model_version, rules_version=row.rules_version,
            event_time=row.event_time.to_pydatetime(),
        )  # fmt: skip
        producer.produce(topic, key=row.card_id, value=_encoder.encode(alert))
    producer.poll(0)
    return len(flagged)
