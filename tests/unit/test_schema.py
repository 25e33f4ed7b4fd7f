import json
from datetime import datetime, timezone

import pytest

from fraudstream.schema import (
    MAX_MESSAGE_BYTES,
    Invalid,
    Label,
    Transaction,
    decode_label,
    decode_transaction,
    encode,
    json_schema,
)

NOW = datetime(2026, 11, 28, 12, tzinfo=timezone.utc)
VALID = {
    "tx_id": "t1",
    "event_time": "2026-11-28T11:59:59.250Z",
    "card_id": "card_ab12",
    "terminal_id": "T1",
    "amount": 12.5,
}


def _decode(**changes: object) -> Transaction | Invalid:
    payload = {**VALID, **changes}
    return decode_transaction(
        json.dumps({k: v for k, v in payload.items() if v is not ...}).encode(), now=NOW
    )


def test_a_valid_transaction_round_trips() -> None:
    record = _decode(merchant_category="grocery", terminal_x=1.5)
    assert isinstance(record, Transaction)
    assert record.event_time == datetime(2026, 11, 28, 11, 59, 59, 250000, tzinfo=timezone.utc)
    assert decode_transaction(encode(record), now=NOW) == record
    assert b"customer_lat" not in encode(record)  # optional fields left out, not null


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"amount": -0.01}, "Expected `float` >= 0.0 - at `$.amount`"),
        ({"amount": "12"}, "Expected `float`, got `str` - at `$.amount`"),
        ({"card_id": ...}, "missing required field `card_id`"),
        ({"tx_id": ""}, "length >= 1 - at `$.tx_id`"),
        ({"event_time": "yesterday"}, "Invalid RFC3339 encoded datetime - at `$.event_time`"),
        ({"event_time": "2026-11-28T11:59:59"}, "Expected `datetime` with a timezone component"),
        ({"event_time": "1970-01-01T00:00:00Z"}, "event_time 1970-01-01T00:00:00+00:00 is outside"),
        ({"event_time": "2031-01-01T00:00:00Z"}, "is outside [2000-01-01, now + 1 day]"),
        ({"cc_num": "4111111111111111"}, "Object contains unknown field `cc_num`"),
    ],
)
def test_invalid_transactions_say_why(changes: dict[str, object], reason: str) -> None:
    result = _decode(**changes)
    assert isinstance(result, Invalid)
    assert reason in result.reason


def test_not_json_and_oversized_payloads() -> None:
    assert "not valid JSON" in decode_transaction(b"{nope", now=NOW).reason  # type: ignore[union-attr]
    huge = json.dumps({**VALID, "channel": "x" * MAX_MESSAGE_BYTES}).encode()
    result = decode_transaction(huge, now=NOW)
    assert isinstance(result, Invalid) and "exceeds the 16384-byte limit" in result.reason


def test_labels() -> None:
    label = Label(tx_id="t1", is_fraud=True, reported_at=NOW, source="chargeback", scenario="x")
    assert decode_label(encode(label)) == label
    assert isinstance(decode_label(b'{"tx_id": "t1"}'), Invalid)


def test_json_schema_lists_the_required_fields() -> None:
    schema = json_schema(Transaction)
    body = schema["$defs"]["Transaction"]
    assert set(body["required"]) == {"tx_id", "event_time", "card_id", "terminal_id", "amount"}
    assert body["properties"]["amount"]["minimum"] == 0
