import pytest

from fraudstream.privacy import CardTokenizer, looks_like_card_number, mask_token

KEY = b"test-key-0123456789abcdef"


def test_tokens_are_stable_keyed_and_free_of_the_number() -> None:
    tokenizer = CardTokenizer(KEY)
    token = tokenizer.token("4111 1111 1111 1111")
    assert token == tokenizer.token(4111111111111111)  # formatting does not matter
    assert token.startswith("card_") and len(token) == 29
    assert "4111" not in token and not looks_like_card_number(token)
    assert CardTokenizer(b"another-key-0123456789").token("4111111111111111") != token


def test_short_keys_and_non_numbers_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        CardTokenizer(b"short")
    with pytest.raises(ValueError, match="not a card number"):
        CardTokenizer(KEY).token("12ab")


def test_masking_and_detection() -> None:
    assert mask_token("card_0123456789abcdef01234567") == "card_…4567"
    assert looks_like_card_number("paid with 4111111111111111 today")
    assert not looks_like_card_number("order 4111111111111112")  # fails the Luhn check


def test_a_card_number_is_told_from_a_token_and_redacted_from_bytes() -> None:
    from fraudstream.privacy import is_card_number, redact_card_numbers

    assert is_card_number("4111111111111111") and is_card_number("4111 1111 1111 1111")
    assert is_card_number("5500-0000-0000-0004") and is_card_number("378282246310005")
    assert not is_card_number("4111111111111112")  # fails the Luhn check
    assert not is_card_number("411111111111")  # 12 digits: too short
    assert not is_card_number("tok_4111111111111111") and not is_card_number("card_9f2c")
    data = b'{"card_id": "4111111111111111", "tx_id": "4111111111111112"}'
    assert redact_card_numbers(data) == (
        b'{"card_id": "[card number removed]", "tx_id": "4111111111111112"}'
    )


def test_the_decoder_refuses_a_card_number_as_card_id() -> None:
    from datetime import datetime, timezone

    from fraudstream.schema import Invalid, decode_transaction

    body = (
        b'{"tx_id": "t", "event_time": "2026-12-01T00:00:00Z", "card_id": "4111111111111111",'
        b' "terminal_id": "T", "amount": 1.0}'
    )
    decoded = decode_transaction(body, now=datetime(2026, 12, 3, tzinfo=timezone.utc))
    assert isinstance(decoded, Invalid)
    assert "card_id looks like a card number" in decoded.reason
    assert "4111111111111111" not in decoded.reason
