"""The dead-letter topics: every message that could not be used, with why and where from.

Dead-lettering itself must never stop a pipeline: an original too large to copy whole is sent
as a bounded excerpt with its size and SHA-256; a letter Kafka refuses for its content is
retried as an excerpt and, failing that, reported back so the caller keeps it in PostgreSQL.
Only an unreachable broker (nothing acknowledged in time) is an error, and a transient one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from msgspec.structs import replace

from fraudstream.privacy import redact_card_numbers
from fraudstream.records import Rejected

__all__ = ["EXCERPT_BYTES", "DeadLetterError", "dead_letter"]

EXCERPT_BYTES = 4096
"""How much of an oversized original is kept on the dead-letter topic."""
_HEADROOM = 8192  # key, headers and the record's own framing, within the topic's size limit
_REASON_BYTES = 1000


class DeadLetterError(Exception):
    """Dead letters were not acknowledged: the batch must not commit (it is processed again)."""


def _headers(letter: Rejected, excerpt: bool) -> dict[str, str | bytes | None]:
    headers: dict[str, str | bytes | None] = {
        "reason": letter.reason.encode()[:_REASON_BYTES],
        "source.topic": letter.topic.encode(),
        "source.partition": str(letter.partition).encode(),
        "source.offset": str(letter.offset).encode(),
    }
    if excerpt:
        headers |= {
            "original.size": str(len(letter.value)).encode(),
            "original.sha256": hashlib.sha256(letter.value).hexdigest().encode(),
            "truncated": b"true",
        }
    return headers


def _fits(letter: Rejected, max_message_bytes: int) -> bool:
    return len(letter.value) + len(letter.key or b"") + _HEADROOM <= max_message_bytes


def dead_letter(
    producer: Producer,
    topic: str,
    letters: Iterable[Rejected],
    *,
    max_message_bytes: int,
    timeout_s: float = 30.0,
) -> list[Rejected]:
    """Send ``letters`` to ``topic`` and wait for every acknowledgement.

    Returns the letters Kafka refused even as an excerpt, their reason extended with Kafka's
    error: the caller stores those in ``dlq_events`` so none is lost. Raises
    ``DeadLetterError`` when the broker does not acknowledge in time (a transient failure).
    """
    pending = list(letters)
    refused: list[Rejected] = []
    for excerpt_round in (False, True):
        failures: list[tuple[Rejected, KafkaError]] = []
        for letter in pending:
            excerpt = excerpt_round or not _fits(letter, max_message_bytes)
            value = letter.value[:EXCERPT_BYTES] if excerpt else letter.value
            key = (letter.key or b"")[:EXCERPT_BYTES] if excerpt else letter.key
            # No card number is kept anywhere, dead letters included.
            value = redact_card_numbers(value)
            key = None if key is None else redact_card_numbers(key)

            def delivered(
                error: KafkaError | None,
                _message: Message,
                letter: Rejected = letter,
                failures: list[tuple[Rejected, KafkaError]] = failures,
            ) -> None:
                if error is not None:
                    failures.append((letter, error))

            headers = _headers(letter, excerpt)
            try:
                try:
                    producer.produce(
                        topic, key=key, value=value, headers=headers, on_delivery=delivered
                    )
                except BufferError:  # the local queue is full: make room once, then try again
                    producer.flush(timeout_s)
                    producer.produce(
                        topic, key=key, value=value, headers=headers, on_delivery=delivered
                    )
            except KafkaException as error:  # refused before it was queued (e.g. its size)
                failures.append((letter, error.args[0]))
        if producer.flush(timeout_s):
            raise DeadLetterError(f"dead letters not acknowledged by Kafka within {timeout_s} s")
        retriable = [error for _, error in failures if error.retriable()]
        if retriable:
            raise DeadLetterError(f"dead letters not acknowledged by Kafka: {retriable[0]}")
        if not failures:
            return refused
        if excerpt_round:
            refused = [
                replace(letter, reason=f"{letter.reason}; not on {topic}: {error.str()}")
                for letter, error in failures
            ]
        pending = [letter for letter, _ in failures]
    return refused
