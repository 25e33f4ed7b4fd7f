"""What the features are: windows, names generated from them, and the version of the set.

Every engine and the offline trainer compute exactly these columns with the same code; the
model records ``FEATURES_VERSION`` and the engine refuses a model built for another set.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

__all__ = [
    "CARD_HISTORY_CAP",
    "CARD_STATE_TTL",
    "CARD_WINDOWS",
    "DISTINCT_TERMINAL_WINDOWS",
    "FEATURES_VERSION",
    "FEATURE_NAMES",
    "TERMINAL_DELAY",
    "TERMINAL_WINDOWS",
    "describe",
    "window_name",
]

FEATURES_VERSION = "1"

CARD_WINDOWS = (timedelta(hours=1), timedelta(days=1), timedelta(days=7), timedelta(days=30))
DISTINCT_TERMINAL_WINDOWS = (timedelta(days=1), timedelta(days=7))
TERMINAL_WINDOWS = (timedelta(days=1), timedelta(days=7), timedelta(days=30))
TERMINAL_DELAY = timedelta(days=7)
"""Terminal risk looks at transactions at least this old, whose outcomes are mostly known
(the Fraud Detection Handbook's delay)."""
KNOWN_FRAUD_WINDOW = timedelta(days=7)

CARD_HISTORY_CAP = 512
"""At most this many of a card's latest transactions are in any window (bounds state size)."""
CARD_STATE_TTL = timedelta(days=35)
"""A card idle this long is forgotten: the longest window (30 days) plus 5 days of lateness."""
NIGHT_HOURS = 6
"""A transaction before 06:00 UTC counts as at night (the Handbook's definition)."""


def window_name(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    if seconds % 86_400 == 0:
        return f"{seconds // 86_400}d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return f"{seconds}s"


def _names() -> tuple[str, ...]:
    names = ["amount", "hour", "is_night", "is_weekend"]
    for window in CARD_WINDOWS:
        names += [f"card_tx_count_{window_name(window)}", f"card_amount_mean_{window_name(window)}"]
    names += [
        f"card_amount_ratio_{window_name(CARD_WINDOWS[-1])}",
        "card_seconds_since_prev",
        "card_terminal_distance",
        "card_terminal_speed",
        "card_distance_from_home",
    ]
    names += [f"card_distinct_terminals_{window_name(w)}" for w in DISTINCT_TERMINAL_WINDOWS]
    for window in TERMINAL_WINDOWS:
        names += [
            f"terminal_tx_count_{window_name(window)}_delayed",
            f"terminal_risk_{window_name(window)}_delayed",
        ]
    known = window_name(KNOWN_FRAUD_WINDOW)
    names += [f"terminal_known_frauds_{known}", f"terminal_known_fraud_rate_{known}"]
    return tuple(names)


FEATURE_NAMES = _names()


@dataclass(frozen=True)
class Phrase:
    """How a feature's value reads to an analyst."""

    template: str
    scale: float = 1.0

    def render(self, value: float) -> str:
        return self.template.format(v=value * self.scale)


def _phrases() -> dict[str, Phrase]:
    phrases = {
        "amount": Phrase("amount {v:,.2f}"),
        "hour": Phrase("at {v:.0f}h UTC"),
        "is_night": Phrase("at night (before 06:00)"),
        "is_weekend": Phrase("on a weekend"),
        "card_amount_ratio_30d": Phrase("amount {v:.1f}× this card's 30-day average"),
        "card_seconds_since_prev": Phrase(
            "{v:,.0f} min since this card's previous transaction", 1 / 60
        ),
        "card_terminal_distance": Phrase("{v:,.1f} from this card's previous terminal"),
        "card_terminal_speed": Phrase("moved at {v:,.0f} per hour between terminals"),
        "card_distance_from_home": Phrase("{v:,.1f} from the card holder's home"),
        "terminal_known_frauds_7d": Phrase("{v:.0f} reported frauds at this terminal in 7 days"),
        "terminal_known_fraud_rate_7d": Phrase(
            "{v:.0%} of this terminal's last 7 days reported as fraud"
        ),
    }
    for window in CARD_WINDOWS:
        name = window_name(window)
        phrases[f"card_tx_count_{name}"] = Phrase(f"{{v:.0f}} transactions on this card in {name}")
        phrases[f"card_amount_mean_{name}"] = Phrase(
            f"card's average amount {{v:,.2f}} over {name}"
        )
    for window in DISTINCT_TERMINAL_WINDOWS:
        name = window_name(window)
        phrases[f"card_distinct_terminals_{name}"] = Phrase(
            f"{{v:.0f}} different terminals in {name}"
        )
    for window in TERMINAL_WINDOWS:
        name = window_name(window)
        phrases[f"terminal_tx_count_{name}_delayed"] = Phrase(
            f"{{v:.0f}} transactions at this terminal over {name} a week ago"
        )
        phrases[f"terminal_risk_{name}_delayed"] = Phrase(
            f"terminal's fraud rate {{v:.0%}} over {name} a week ago"
        )
    return phrases


PHRASES = _phrases()
assert set(PHRASES) == set(FEATURE_NAMES), set(FEATURE_NAMES) ^ set(PHRASES)


def describe(feature: str, value: float) -> str:
    """A feature's value in words ("amount 5.2× this card's 30-day average")."""
    if value != value:  # NaN: the feature had nothing to look at
        return f"{feature} unknown (no history)"
    return PHRASES[feature].render(value)
