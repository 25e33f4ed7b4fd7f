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
