"""The canonical records every part of fraudstream exchanges, and their JSON (de)serialisation.

A transaction carries a card *token*, never a card number. Decoding never raises for bad
input: it returns a reason, so callers can route the original bytes to the dead-letter topic.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

import msgspec
import msgspec.inspect

from fraudstream.privacy import is_card_number

__all__ = [
    "CARD_NUMBER_REFUSED",
    "MAX_MESSAGE_BYTES",
    "Invalid",
    "Label",
    "Transaction",
    "content_digest",
    "decode_label",
    "decode_transaction",
    "encode",
    "json_schema",
]

MAX_MESSAGE_BYTES = 16 * 1024
"""A transaction is a few hundred bytes; anything this large is not one."""

_EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)
_FUTURE_SLACK = timedelta(days=1)

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Amount = Annotated[float, msgspec.Meta(ge=0, le=10_000_000)]
UtcTime = Annotated[datetime, msgspec.Meta(tz=True)]
Coordinate = Annotated[float, msgspec.Meta(ge=-1e6, le=1e6)]
ShortText = Annotated[str, msgspec.Meta(max_length=64)]


class Transaction(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """One card payment as it enters the system.

    Coordinates are either planar (``*_x``/``*_y``, the simulator's map) or geographic
    (``*_lat``/``*_lon``, real datasets); both are optional.
    """

    tx_id: Id
    event_time: UtcTime
    card_id: Id
    terminal_id: Id
    amount: Amount
    currency: ShortText | None = None
    merchant_category: ShortText | None = None
    channel: ShortText | None = None
    customer_x: Coordinate | None = None
    customer_y: Coordinate | None = None
    terminal_x: Coordinate | None = None
    terminal_y: Coordinate | None = None
    customer_lat: Annotated[float, msgspec.Meta(ge=-90, le=90)] | None = None
    customer_lon: Annotated[float, msgspec.Meta(ge=-180, le=180)] | None = None
    terminal_lat: Annotated[float, msgspec.Meta(ge=-90, le=90)] | None = None
    terminal_lon: Annotated[float, msgspec.Meta(ge=-180, le=180)] | None = None


class Label(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """A late outcome for one transaction: a chargeback, an analyst verdict, a dataset label.

    ``scenario`` names the simulated fraud pattern; it exists for evaluation only and is never
    part of a transaction the engine scores.
    """

    tx_id: Id
    is_fraud: bool
    reported_at: UtcTime
    source: ShortText
    card_id: Id | None = None
    scenario: ShortText | None = None


class Invalid(msgspec.Struct, frozen=True):
    """Why a message could not be used (it goes to the dead-letter topic with this reason)."""

    reason: str


_encoder = msgspec.json.Encoder()
_transaction_decoder = msgspec.json.Decoder(Transaction)
_label_decoder = msgspec.json.Decoder(Label)


def encode(record: Transaction | Label) -> bytes:
    return _encoder.encode(record)


def _too_large(payload: bytes) -> str:
    return f"payload of {len(payload)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit"


def _unstorable_text(record: msgspec.Struct, payload: bytes) -> str | None:
    """PostgreSQL text cannot hold a NUL character: refuse it here, as a record error, rather
    than let it fail a whole batch's COPY later. JSON can only carry one as the escape
    ``\\u0000``, so a payload without it needs no look at its fields."""
    if b"\\u0000" not in payload and b"\x00" not in payload:
        return None
    for name in record.__struct_fields__:
        value = getattr(record, name)
        if isinstance(value, str) and "\x00" in value:
            return f"{name} contains a NUL character (\\u0000), which PostgreSQL text cannot store"
    return None


def _holds_float(info: msgspec.inspect.Type) -> bool:
    if isinstance(info, msgspec.inspect.UnionType):
        return any(_holds_float(member) for member in info.types)
    return isinstance(info, msgspec.inspect.FloatType)


_FLOAT_FIELDS = tuple(
    field.name
    for field in msgspec.structs.fields(Transaction)
    if _holds_float(msgspec.inspect.type_info(field.type))
)
"""The fields where a -0.0 may hide (the digest counts it as 0.0)."""


def content_digest(record: Transaction) -> int:
    """A signed 64-bit digest of a transaction's content: equal for equal records however the
    JSON was written (key order, spacing, the instant's UTC offset, -0.0), so that a reused
    ``tx_id`` can be told from a replay."""
    changes: dict[str, Any] = {}
    if record.event_time.tzinfo is not timezone.utc:  # msgspec reads Z and +00:00 as this one
        changes["event_time"] = record.event_time.astimezone(timezone.utc)
    for name in _FLOAT_FIELDS:
        value = getattr(record, name)
        if isinstance(value, float) and value == 0.0:
            changes[name] = 0.0  # -0.0 == 0.0, and encodes otherwise
    # Most records are canonical already: a copy is made only to change something.
    canonical = msgspec.structs.replace(record, **changes) if changes else record
    digest = hashlib.blake2b(_encoder.encode(canonical), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def decode_transaction(payload: bytes, *, now: datetime) -> Transaction | Invalid:
    """Parse and validate one message; ``now`` bounds how far in the future event time may be."""
    if len(payload) > MAX_MESSAGE_BYTES:
        return Invalid(_too_large(payload))
    try:
        record = _transaction_decoder.decode(payload)
    except msgspec.ValidationError as error:
        return Invalid(f"invalid transaction: {error}")
    except msgspec.DecodeError as error:
        return Invalid(f"not valid JSON: {error}")
    if not _EARLIEST <= record.event_time <= now + _FUTURE_SLACK:
        return Invalid(
            f"event_time {record.event_time.isoformat()} is outside "
            f"[{_EARLIEST.date()}, now + {_FUTURE_SLACK.days} day]"
        )
    unstorable = _unstorable_text(record, payload)
    if unstorable:
        return Invalid(f"invalid transaction: {unstorable}")
    if is_card_number(record.card_id):
        return Invalid(f"invalid transaction: {CARD_NUMBER_REFUSED}")
    return record


CARD_NUMBER_REFUSED = (
    "card_id looks like a card number (13 to 19 digits passing the Luhn check): send a token, "
    "never the number (`fraudstream replay` tokenises card numbers)"
)
"""Why a transaction carrying a card number is refused (its dead letter is redacted)."""


def decode_label(payload: bytes) -> Label | Invalid:
    if len(payload) > MAX_MESSAGE_BYTES:
        return Invalid(_too_large(payload))
    try:
        label = _label_decoder.decode(payload)
    except msgspec.ValidationError as error:
        return Invalid(f"invalid label: {error}")
    except msgspec.DecodeError as error:
        return Invalid(f"not valid JSON: {error}")
    unstorable = _unstorable_text(label, payload)
    return Invalid(f"invalid label: {unstorable}") if unstorable else label


def json_schema(record: type[Transaction] | type[Label]) -> dict[str, Any]:
    """JSON Schema of a canonical record, for producers written in other languages."""
    return msgspec.json.schema(record)
