"""Dead-lettering against an in-memory producer that behaves as librdkafka does: a message
over the client's ``message.max.bytes`` is refused when produced, one over the topic's
``max.message.bytes`` in its delivery report; ``flush`` returns what is still queued."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from confluent_kafka import KafkaError, KafkaException

from fraudstream.bus.deadletter import EXCERPT_BYTES, DeadLetterError, dead_letter
from fraudstream.records import Rejected

TOPIC = "transactions.dlq"
MAX = 1_048_576  # the topic's size limit as the engine is configured with it
HEADROOM = 8192  # what dead_letter keeps free for key, headers and framing
Callback = Callable[[KafkaError | None, object], None]


@dataclass(frozen=True)
class Sent:
    topic: str
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]

    @property
    def size(self) -> int:
        return (
            len(self.value)
            + len(self.key or b"")
            + sum(len(k) + len(v) for k, v in self.headers.items())
        )


@dataclass
class FakeProducer:
    client_limit: int | None = None  # refused at produce time (KafkaException)
    topic_limit: int | None = None  # refused by the broker (delivery report)
    failure: KafkaError | None = None  # every delivery report carries this error
    stuck: bool = False  # nothing is ever acknowledged: flush times out
    capacity: int | None = None  # produce raises BufferError while this many are queued
    attempts: list[Sent] = field(default_factory=list)  # queued
    delivered: list[Sent] = field(default_factory=list)  # acknowledged
    flushes: list[float | None] = field(default_factory=list)
    _queue: list[tuple[Sent, Callback]] = field(default_factory=list)

    def produce(
        self,
        topic: str,
        key: bytes | None = None,
        value: bytes | None = None,
        headers: dict[str, bytes] | None = None,
        on_delivery: Callback | None = None,
    ) -> None:
        if self.capacity is not None and len(self._queue) >= self.capacity:
            raise BufferError("Local: Queue full")
        sent = Sent(topic, key, value or b"", dict(headers or {}))
        if self.client_limit is not None and sent.size > self.client_limit:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        assert on_delivery is not None
        self.attempts.append(sent)
        self._queue.append((sent, on_delivery))

    def flush(self, timeout: float | None = None) -> int:
        self.flushes.append(timeout)
        if self.stuck:
            return len(self._queue)
        queue, self._queue = self._queue, []
        for sent, on_delivery in queue:
            error = self.failure
            if error is None and self.topic_limit is not None and sent.size > self.topic_limit:
                error = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
            if error is None:
                self.delivered.append(sent)
            on_delivery(error, None)
        return 0


def _letter(
    offset: int, value: bytes, key: bytes | None = b"card-1", reason: str = "bad"
) -> Rejected:
    return Rejected("transactions", 3, offset, reason, key, value)


def _send(producer: FakeProducer, *letters: Rejected, timeout_s: float = 30.0) -> list[Rejected]:
    return dead_letter(producer, TOPIC, list(letters), max_message_bytes=MAX, timeout_s=timeout_s)  # type: ignore[arg-type]


def _noise(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def _source_headers(letter: Rejected) -> dict[str, bytes]:
    return {
        "reason": letter.reason.encode(),
        "source.topic": letter.topic.encode(),
        "source.partition": str(letter.partition).encode(),
        "source.offset": str(letter.offset).encode(),
    }


def _excerpt_headers(letter: Rejected) -> dict[str, bytes]:
    return {
        **_source_headers(letter),
        "original.size": str(len(letter.value)).encode(),
        "original.sha256": hashlib.sha256(letter.value).hexdigest().encode(),
        "truncated": b"true",
    }


def test_letters_that_fit_are_sent_whole_with_where_they_came_from() -> None:
    producer = FakeProducer(topic_limit=MAX)
    letters = [
        _letter(7, b'{"tx_id": 1', reason="not valid JSON: truncated"),
        _letter(8, b"", key=None, reason="empty"),
        # The largest value that fits whole beside its key and the headroom.
        _letter(9, _noise(MAX - HEADROOM - len(b"card-1")), reason="invalid transaction"),
    ]
    assert _send(producer, *letters, timeout_s=4.5) == []
    assert producer.delivered == [
        Sent(TOPIC, letter.key, letter.value, _source_headers(letter)) for letter in letters
    ]
    assert producer.attempts == producer.delivered  # once each
    assert producer.flushes == [4.5]


def test_an_oversized_original_is_sent_as_an_excerpt_with_its_size_and_digest() -> None:
    producer = FakeProducer(client_limit=MAX, topic_limit=MAX)
    original = _noise(MAX - HEADROOM - len(b"card-1") + 1, seed=1)  # one byte too many
    big_key = _noise(EXCERPT_BYTES + 10, seed=2)
    letters = [_letter(1, original), _letter(2, _noise(3 * MAX, seed=3), key=big_key)]
    assert _send(producer, *letters) == []
    assert producer.attempts == producer.delivered
    first, second = producer.delivered
    assert first == Sent(TOPIC, b"card-1", original[:EXCERPT_BYTES], _excerpt_headers(letters[0]))
    assert second.key == big_key[:EXCERPT_BYTES]
    assert second.value == letters[1].value[:EXCERPT_BYTES]
    assert second.headers["original.size"] == str(3 * MAX).encode()
    # The digest is the whole original's, not the excerpt's.
    assert (
        second.headers["original.sha256"] == hashlib.sha256(letters[1].value).hexdigest().encode()
    )
    assert second.headers["original.sha256"] != hashlib.sha256(second.value).hexdigest().encode()


@pytest.mark.parametrize("limit_kind", ["client_limit", "topic_limit"])
def test_a_letter_refused_whole_is_sent_again_as_an_excerpt(limit_kind: str) -> None:
    """The topic's limit is smaller than the engine was told: Kafka refuses the whole letter,
    at produce time (client) or in the delivery report (broker); its excerpt goes through,
    and the letters Kafka took are not sent twice."""
    limit = 64 * 1024
    producer = FakeProducer(**{limit_kind: limit})  # type: ignore[arg-type]
    small, large = _letter(1, b"small"), _letter(2, _noise(limit, seed=4), reason="too big")
    assert _send(producer, small, large) == []
    assert producer.delivered == [
        Sent(TOPIC, small.key, small.value, _source_headers(small)),
        Sent(TOPIC, large.key, large.value[:EXCERPT_BYTES], _excerpt_headers(large)),
    ]
    # A message refused at produce time was never queued; one the broker refused was.
    assert len(producer.attempts) == (2 if limit_kind == "client_limit" else 3)


@pytest.mark.parametrize("limit_kind", ["client_limit", "topic_limit"])
def test_a_letter_refused_even_as_an_excerpt_comes_back_with_why(limit_kind: str) -> None:
    limit = EXCERPT_BYTES // 2  # even the excerpt is too large for this topic
    producer = FakeProducer(**{limit_kind: limit})  # type: ignore[arg-type]
    kept, refused = _letter(1, b"fits"), _letter(2, _noise(EXCERPT_BYTES, seed=5), reason="bad")
    returned = _send(producer, kept, refused)
    assert returned == [
        Rejected(
            refused.topic, refused.partition, refused.offset,
            f"bad; not on {TOPIC}: {KafkaError(KafkaError.MSG_SIZE_TOO_LARGE).str()}",
            refused.key, refused.value,  # the original, whole, for the database
        )
    ]  # fmt: skip
    assert producer.delivered == [Sent(TOPIC, kept.key, kept.value, _source_headers(kept))]


def test_a_retriable_delivery_error_is_a_dead_letter_error() -> None:
    producer = FakeProducer(failure=KafkaError(KafkaError._MSG_TIMED_OUT, retriable=True))
    with pytest.raises(DeadLetterError, match="not acknowledged by Kafka"):
        _send(producer, _letter(1, b"x"))
    assert producer.delivered == []


def test_a_retriable_error_at_produce_time_is_a_dead_letter_error() -> None:
    class Down(FakeProducer):
        def produce(self, *args: object, **kwargs: object) -> None:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, retriable=True))

    with pytest.raises(DeadLetterError):
        _send(Down(), _letter(1, b"x"))


def test_a_flush_timeout_is_a_dead_letter_error() -> None:
    producer = FakeProducer(stuck=True)
    with pytest.raises(DeadLetterError, match=r"within 2\.0 s"):
        _send(producer, _letter(1, b"x"), timeout_s=2.0)
    assert producer.flushes == [2.0]


def test_a_full_local_queue_is_flushed_and_the_letter_sent_once() -> None:
    producer = FakeProducer(capacity=2)
    letters = [_letter(1, b"a"), _letter(2, b"b"), _letter(3, b"c")]
    assert _send(producer, *letters, timeout_s=3.0) == []
    assert [sent.value for sent in producer.delivered] == [b"a", b"b", b"c"]
    assert producer.attempts == producer.delivered
    assert producer.flushes == [3.0, 3.0]  # room made once, then the final wait


def test_a_long_reason_header_is_bounded() -> None:
    producer = FakeProducer()
    letter = _letter(1, b"x", reason="r" * 5000)
    assert _send(producer, letter) == []
    assert producer.delivered[0].headers["reason"] == b"r" * 1000
    assert producer.delivered[0].value == b"x"


def test_nothing_to_send_sends_nothing() -> None:
    producer = FakeProducer()
    assert _send(producer) == []
    assert producer.attempts == []
