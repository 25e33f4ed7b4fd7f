"""The API's side of request–reply over Kafka (docs/adr/0007): a transaction goes to the
transactions topic keyed by card, with this process's name in ``fs-reply-to``; the owning
engine's verdict comes back on the decisions topic keyed by that name.

A producer sends (idempotent, ``acks=all``: a transaction the API accepted is never lost or
doubled by a retry of the send); a consumer thread reads every partition of the decisions
topic from its end, keeps the verdicts addressed to this process and resolves the waiting
requests on the event loop. It also remembers each card's newest feature vector from the
verdicts it saw: the card state a degraded answer can use when the engine is out of reach.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

import msgspec
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from fraudstream.bus.clients import FETCH_WAIT_MS
from fraudstream.bus.replies import REPLY_HEADER
from fraudstream.config import KafkaSettings
from fraudstream.records import Verdict

__all__ = ["CardSnapshot", "DecisionBridge"]

log = logging.getLogger("fraudstream.api")

_CARDS_KEPT = 200_000  # cards whose newest features are remembered for degraded answers
_verdict_decoder = msgspec.json.Decoder(Verdict)


@dataclass(frozen=True)
class CardSnapshot:
    """A card's feature vector as of its newest decided transaction this process saw."""

    features: list[float]
    as_of: datetime


class DecisionBridge:
    def __init__(self, kafka: KafkaSettings, loop: asyncio.AbstractEventLoop) -> None:
        self.kafka = kafka
        self.loop = loop
        self.name = f"api-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._name_bytes = self.name.encode()
        self._waiting: dict[str, tuple[int, asyncio.Future[Verdict]]] = {}  # tx_id → digest
        self.cards: OrderedDict[str, CardSnapshot] = OrderedDict()
        self.undelivered = 0
        self._stop = threading.Event()
        self.producer = Producer(
            {
                **kafka.client_config(),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 0,
                "compression.type": "lz4",
                "message.max.bytes": kafka.max_message_bytes,
                # No report per delivered message: only failures are worth one (they are
                # logged and counted in /v1/health).
                "delivery.report.only.error": True,
                "on_delivery": self._delivered,
                "log_level": 3,
            }
        )
        self.consumer = Consumer(
            {
                **kafka.client_config(),
                "group.id": self.name,  # never joins: partitions are assigned, not subscribed
                "enable.auto.commit": False,
                "fetch.wait.max.ms": FETCH_WAIT_MS,  # answered as soon as a verdict arrives
                "log_level": 3,
            }
        )
        self._thread = threading.Thread(target=self._read, name="verdicts", daemon=True)
        self._poller = threading.Thread(target=self._deliveries, name="deliveries", daemon=True)

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> None:
        """Assign every partition of the decisions topic at its current end (an explicit
        offset, so that no verdict sent from now on can be skipped), then start reading."""
        topic = self.kafka.topics.decisions
        metadata = self.consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise RuntimeError(f"topic {topic!r} is missing: run `fraudstream init`")
        partitions = []
        for partition in sorted(metadata.partitions):
            _low, high = self.consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout_s
            )
            partitions.append(TopicPartition(topic, partition, high))
        self.consumer.assign(partitions)
        self._thread.start()
        self._poller.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._poller.join(5)
        self.producer.flush(10)
        self.consumer.close()

    # --- requests ------------------------------------------------------------------------

    def ask(
        self, tx_id: str, digest: int, card_id: str, value: bytes
    ) -> asyncio.Future[Verdict] | None:
        """Send a transaction for the owning engine to decide; the future gets its verdict.
        A request for a tx_id already waiting here with the same content (``digest``) shares
        its future; with other content it gets None: a conflict."""
        waiting = self._waiting.get(tx_id)
        if waiting is not None and not waiting[1].done():
            return waiting[1] if waiting[0] == digest else None
        future: asyncio.Future[Verdict] = self.loop.create_future()
        self._waiting[tx_id] = (digest, future)
        future.add_done_callback(lambda _f: self._forget(tx_id, future))
        while True:
            try:
                self.producer.produce(
                    self.kafka.topics.transactions, value=value, key=card_id,
                    headers=[(REPLY_HEADER, self._name_bytes)],
                )  # fmt: skip
                return future
            except BufferError:  # local queue full (broker away for long): let it drain
                self.producer.poll(0.005)

    def _forget(self, tx_id: str, future: asyncio.Future[Verdict]) -> None:
        waiting = self._waiting.get(tx_id)
        if waiting is not None and waiting[1] is future:
            del self._waiting[tx_id]

    def _delivered(self, error: KafkaError | None, _message: object) -> None:
        if error is not None:
            self.undelivered += 1
            log.error("a transaction could not be appended to Kafka: %s", error)

    def _deliveries(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)

    # --- verdicts ------------------------------------------------------------------------

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                # A batch consume waits for its count or its timeout: wait for one verdict,
                # then take whatever else has arrived.
                messages = self.consumer.consume(1, 0.05)
                if messages:
                    messages += self.consumer.consume(499, 0)
            except Exception as error:  # keep reading: a request without answer degrades
                log.warning("reading verdicts: %s", error)
                continue
            verdicts = []
            for message in messages:
                if message.error() is not None or message.key() != self._name_bytes:
                    continue
                try:
                    verdicts.append(_verdict_decoder.decode(message.value() or b""))
                except msgspec.DecodeError as error:
                    log.warning("unreadable verdict: %s", error)
            if verdicts:
                self.loop.call_soon_threadsafe(self._resolve, verdicts)

    def _resolve(self, verdicts: list[Verdict]) -> None:
        """On the event loop: wake each waiting request, and remember card states."""
        for verdict in verdicts:
            if verdict.status == "decided" and verdict.card_id and verdict.event_time:
                features = [math.nan if v is None else v for v in verdict.features]
                self._remember(verdict.card_id, CardSnapshot(features, verdict.event_time))
            waiting = self._waiting.get(verdict.tx_id)
            if waiting is not None and not waiting[1].done():
                waiting[1].set_result(verdict)

    def _remember(self, card_id: str, snapshot: CardSnapshot) -> None:
        known = self.cards.get(card_id)
        if known is not None and known.as_of > snapshot.as_of:
            return
        self.cards[card_id] = snapshot
        self.cards.move_to_end(card_id)
        if len(self.cards) > _CARDS_KEPT:
            self.cards.popitem(last=False)
