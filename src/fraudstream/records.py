"""The typed records that cross the engine's boundaries: a decoded batch's columns, the
prediction the sink stores, the alert it publishes, and a rejected message.

``schema.py`` holds what enters the system (transactions, labels); this module holds what
the engines make of it. Table columns and Spark schemas are derived from these definitions.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from fraudstream.schema import Transaction

__all__ = [
    "BATCH_COLUMNS",
    "BATCH_SOURCE_COLUMNS",
    "PREDICTION_COLUMNS",
    "Alert",
    "Prediction",
    "Rejected",
    "StoredId",
    "Verdict",
]


class Prediction(msgspec.Struct, frozen=True, kw_only=True):
    """One scored transaction as ``fraud_predictions`` stores it (``features`` in
    ``FEATURE_NAMES`` order; ``late``: behind its partition's watermark, not counted in
    terminal activity)."""

    tx_id: str
    event_time: datetime
    card_id: str
    terminal_id: str
    amount: float
    score: float
    decision: str
    rule_hits: list[str]
    reasons: list[dict[str, object]]
    model_version: str
    engine: str
    kafka_partition: int | None
    kafka_offset: int | None
    kafka_time: datetime | None
    scored_at: datetime
    content_hash: int
    features: list[float]
    rules_version: str
    late: bool


PREDICTION_COLUMNS: tuple[str, ...] = Prediction.__struct_fields__

BATCH_SOURCE_COLUMNS = ("kafka_partition", "kafka_offset", "kafka_time", "content_hash", "late")
"""What a decoded batch carries beside the canonical transaction columns: where each record
came from, its content digest (``schema.content_digest``) and whether it is late."""

BATCH_COLUMNS: tuple[str, ...] = (*Transaction.__struct_fields__, *BATCH_SOURCE_COLUMNS)


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    """A review or decline, on the alerts topic keyed by card (consumers dedupe by tx_id)."""

    tx_id: str
    card_id: str
    terminal_id: str
    amount: float
    score: float
    decision: str
    rule_hits: list[str]
    reasons: list[dict[str, object]]
    model_version: str
    rules_version: str
    event_time: datetime


class Rejected(msgspec.Struct, frozen=True):
    """A message that could not be used: where it came from, why, and its original bytes."""

    topic: str
    partition: int
    offset: int
    reason: str
    key: bytes | None = None
    value: bytes = b""


class StoredId(msgspec.Struct, frozen=True):
    """Where a stored (or in-flight) ``tx_id`` came from, and its content digest: what tells
    a replay, a reused id and a redelivery after a crash apart."""

    content_hash: int | None
    partition: int | None
    offset: int | None


class Verdict(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An engine's answer to a transaction that asked for one (the decision API's request
    header ``fs-reply-to``), on the decisions topic keyed by the asking API process.

    ``decided``: stored in ``fraud_predictions`` with exactly these values (sent after the
    commit). ``replay``: the tx_id was stored before with identical content (the stored row
    is the answer); ``conflict``: stored before with other content; ``rejected``: the record
    was dead-lettered (``detail`` says why)."""

    tx_id: str
    status: Literal["decided", "replay", "conflict", "rejected"]
    card_id: str | None = None
    decision: str | None = None
    score: float | None = None
    rule_hits: list[str] = []
    reasons: list[dict[str, object]] = []
    model_version: str | None = None
    rules_version: str | None = None
    event_time: datetime | None = None
    scored_at: datetime | None = None
    features: list[float | None] = []  # FEATURE_NAMES order, None for NaN: a degraded
    # answer's stale card state
    detail: str | None = None
