"""The answer when the owning engine cannot decide within the budget: the policy's fallback.

Like a card network's stand-in processing: a floor limit (amounts up to
``api.fallback_floor_amount`` are approved, larger ones reviewed), then every rule that can
be evaluated on what the API has: the request itself (amount, time, terminal, card) and the
card's newest features this process saw in a verdict (stale: they stop at that card's last
decided transaction). No model score: the model needs the terminal tables and the card's
current state, which only the engine has. The strongest of floor and rules wins, as in
``policy.decide``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timezone

from fraudstream.api.bridge import CardSnapshot
from fraudstream.features import FEATURE_NAMES
from fraudstream.features.definitions import NIGHT_HOURS
from fraudstream.policy import RuleSet, rules_fired
from fraudstream.policy.decide import DECISIONS
from fraudstream.policy.expressions import TEXT_FIELDS
from fraudstream.schema import Transaction

__all__ = ["Fallback", "fallback_decision"]

_SEVERITY = list(DECISIONS)  # approve < review < decline, as the policy orders them
_TERMINAL = [name for name in FEATURE_NAMES if name.startswith("terminal_")]


@dataclass(frozen=True)
class Fallback:
    decision: str
    rule_hits: list[str]
    reasons: list[str]
    stale: list[str]  # inputs used although older than the transaction
    missing: list[str]  # inputs the full decision has and this one did without


def fallback_decision(
    record: Transaction,
    card: CardSnapshot | None,
    rules: RuleSet,
    *,
    floor_amount: float,
    why: str,
) -> Fallback:
    values: dict[str, float] = dict.fromkeys(FEATURE_NAMES, math.nan)
    stale, missing = [], ["model_score", "terminal_risk"]
    if card is not None:
        values.update(zip(FEATURE_NAMES, card.features, strict=False))
        for name in _TERMINAL:
            values[name] = math.nan  # another day's terminal table: not this transaction's
        stale.append(f"card_state as of {card.as_of.isoformat()}")
    else:
        missing.insert(0, "card_state")
    # This transaction's own values, over the card vector's (those are its last one's).
    values["amount"] = record.amount
    utc = record.event_time.astimezone(timezone.utc)  # as features.pipeline.calendar_features
    values.update(hour=utc.hour, is_night=float(utc.hour < NIGHT_HOURS))
    values["is_weekend"] = float(utc.weekday() >= 5)
    texts = {name: getattr(record, name) for name in TEXT_FIELDS}
    fired = rules_fired(rules, values, texts)
    hits = [name for name, _action in fired]
    floor = "approve" if record.amount <= floor_amount else "review"
    actions = {action for _name, action in fired}
    decision = max([floor, *(actions - {"allow"})], key=_SEVERITY.index)
    if "allow" in actions and "decline" not in actions:
        decision = "approve"  # as policy.decide: allowed unless a rule declines
    reasons = [why]
    if floor == "review":
        reasons.append(f"amount {record.amount:.2f} is above the fallback floor {floor_amount:.2f}")
    reasons += [f"rule {name} fired" for name in hits]
    if card is None:
        reasons.append("no recent state of this card at hand: card rules not evaluated")
    return Fallback(decision, list(hits), reasons, stale, missing)
