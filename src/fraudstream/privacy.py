"""Card numbers never enter the system: they are replaced by keyed tokens at the edge.

A token is an HMAC-SHA256 of the normalised card number under a secret key, so the same card
always gets the same token (features keyed by card still work) while nobody without the key
can test a guessed number against it. Tokens are masked further when shown to people.
"""

from __future__ import annotations

import hashlib
import hmac
import re

__all__ = [
    "CardTokenizer",
    "is_card_number",
    "looks_like_card_number",
    "mask_token",
    "redact_card_numbers",
]

_NON_DIGITS = re.compile(r"\D")
_CARD_LIKE = re.compile(r"(?<!\d)\d{12,19}(?!\d)")
_PAN = re.compile(rb"(?<!\d)\d{13,19}(?!\d)")
_SEPARATORS = re.compile(r"[ -]")
REDACTED = b"[card number removed]"


class CardTokenizer:
    prefix = "card_"

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the tokenisation key must be at least 16 bytes")
        self._key = key

    def token(self, card_number: str | int) -> str:
        digits = _NON_DIGITS.sub("", str(card_number))
        if not 8 <= len(digits) <= 19:
            raise ValueError("not a card number: expected 8 to 19 digits")
        digest = hmac.new(self._key, digits.encode(), hashlib.sha256).hexdigest()
        return self.prefix + digest[:24]


def mask_token(token: str) -> str:
    """What a person sees: enough to tell two cards apart, not enough to copy a token."""
    return f"{token[:5]}…{token[-4:]}" if len(token) > 10 else "…" + token[-4:]


def _luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def looks_like_card_number(text: str) -> bool:
    """Whether ``text`` contains a digit run that passes the Luhn check (a PAN-like number)."""
    return any(_luhn_valid(match) for match in _CARD_LIKE.findall(text))


def is_card_number(value: str) -> bool:
    """Whether ``value`` is a card number as people write one: 13 to 19 digits (spaces or
    hyphens between them allowed) that pass the Luhn check. The edge refuses such a card_id:
    the system takes tokens, never numbers."""
    if len(value) < 13:  # most tokens: too short to hold 13 digits
        return False
    digits = _SEPARATORS.sub("", value)
    return 13 <= len(digits) <= 19 and digits.isdigit() and digits.isascii() and _luhn_valid(digits)


def redact_card_numbers(data: bytes) -> bytes:
    """``data`` with every Luhn-valid run of 13 to 19 digits replaced: what a dead letter
    keeps of a message that carried a card number."""
    return _PAN.sub(lambda m: REDACTED if _luhn_valid(m.group().decode()) else m.group(), data)
