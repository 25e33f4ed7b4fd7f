"""The alerts topic: review and decline decisions, keyed by card, for downstream systems."""

from __future__ import annotations

import msgspec
import pandas as pd
from confluent_kafka import Producer

from fraudstream.records import Alert

__all__ = ["publish_alerts"]

_encoder = msgspec.json.Encoder()
_ALERT_COLUMNS = (
    "tx_id", "card_id", "terminal_id", "amount", "score", "decision", "rule_hits", "reasons",
    "model_version", "rules_version", "event_time",
)  # fmt: skip


def publish_alerts(producer: Producer, topic: str, predictions: pd.DataFrame) -> int:
    """Review and decline rows of ``predictions`` to ``topic`` (at-least-once: consumers
    dedupe by ``tx_id``); returns how many."""
    wanted = predictions["decision"].to_numpy(dtype=object) != "approve"
    if not wanted.any():  # most batches, and every small one of a quiet stream
        return 0
    flagged = predictions[wanted]
    columns = {name: flagged[name].tolist() for name in _ALERT_COLUMNS}  # not itertuples: slow
    for i, card_id in enumerate(columns["card_id"]):
        alert = Alert(
            tx_id=columns["tx_id"][i], card_id=card_id, terminal_id=columns["terminal_id"][i],
            amount=float(columns["amount"][i]), score=round(float(columns["score"][i]), 6),
            decision=columns["decision"][i], rule_hits=list(columns["rule_hits"][i]),
            reasons=list(columns["reasons"][i]), model_version=columns["model_version"][i],
            rules_version=columns["rules_version"][i],
            event_time=columns["event_time"][i].to_pydatetime(),
        )  # fmt: skip
        producer.produce(topic, key=card_id, value=_encoder.encode(alert))
    producer.poll(0)
    return len(flagged)
