"""Rules + model thresholds → approve / review / decline, vectorised over a batch."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fraudstream.policy.rules import RuleSet, Texts

__all__ = [
    "DECISIONS",
    "EXPLORE",
    "Decisions",
    "Outcome",
    "apply_rules",
    "decide",
    "explore_draw",
    "rules_fired",
]

DECISIONS = np.array(["approve", "review", "decline"], dtype=object)
_SEVERITY = {"review": 1, "decline": 2}


@dataclass(frozen=True)
class Decisions:
    decision: np.ndarray  # object array of "approve" | "review" | "decline"
    rule_hits: list[list[str]]  # names of the rules that fired, per row
    rules_version: str


@dataclass(frozen=True)
class Outcome:
    """The policy applied to a batch, as arrays: each row's severity (0 approve, 1 review,
    2 decline) and where each active rule fired (``rules.active`` order)."""

    severity: np.ndarray
    fired: list[np.ndarray]
    explorable: np.ndarray  # the model's own declines no rule declined or allowed


def apply_rules(
    scores: np.ndarray,
    columns: Mapping[str, np.ndarray],
    texts: Texts,
    thresholds: Mapping[str, float],
    rules: RuleSet,
) -> Outcome:
    """The stronger of the model's decision (by threshold) and every review or decline rule
    that fires; an ``allow`` rule approves unless a rule declines. No per-row Python: the
    backtest applies it to millions of stored rows."""
    model = np.where(
        scores >= thresholds["decline"], 2, np.where(scores >= thresholds["review"], 1, 0)
    )
    severity = model.copy()
    allowed = np.zeros(len(scores), dtype=bool)
    declined = np.zeros(len(scores), dtype=bool)
    fired_by_rule = []
    for rule in rules.active:
        fired = rule.fired(columns, texts, rules.lists)
        fired_by_rule.append(fired)
        if rule.action == "allow":
            allowed |= fired
        else:
            severity = np.where(fired, np.maximum(severity, _SEVERITY[rule.action]), severity)
            declined |= fired if rule.action == "decline" else False
    severity = np.where(allowed & ~declined, 0, severity)
    return Outcome(severity, fired_by_rule, (model == 2) & ~declined & ~allowed)


def decide(
    scores: np.ndarray,
    features: pd.DataFrame,
    texts: Texts,
    thresholds: dict[str, float],
    rules: RuleSet,
    tx_ids: np.ndarray | None = None,
) -> Decisions:
    """``apply_rules`` with each row's rule hits named; with ``rules.explore`` and
    ``tx_ids``, a share of the model's own declines goes to review (rule hit ``explore``).
    ``texts``: the batch's text fields by name (card_id and terminal_id at least)."""
    matrix = features.to_numpy(dtype=float)  # once: a column at a time costs a millisecond
    columns = {name: matrix[:, i] for i, name in enumerate(features.columns)}
    outcome = apply_rules(scores, columns, texts, thresholds, rules)
    severity = outcome.severity
    hits: list[list[str]] = [[] for _ in range(len(scores))]
    for rule, fired in zip(rules.active, outcome.fired, strict=True):
        for row in np.flatnonzero(fired):
            hits[row].append(rule.name)
    if rules.explore is not None and tx_ids is not None:
        amounts = columns["amount"]
        candidates = outcome.explorable & (amounts <= rules.explore.max_amount)
        for row in np.flatnonzero(candidates):
            if explore_draw(str(tx_ids[row])) < rules.explore.share:
                severity[row] = 1
                hits[row].append(EXPLORE)
    return Decisions(decision=DECISIONS[severity], rule_hits=hits, rules_version=rules.version)


EXPLORE = "explore"
"""The rule hit of a would-be decline sent to review to learn its outcome."""


def explore_draw(tx_id: str) -> float:
    """A uniform number in [0, 1) fixed by the tx_id: the same draw in every engine, on
    every replay, and in the audit."""
    digest = hashlib.blake2b(tx_id.encode(), digest_size=8, person=b"fs-explore").digest()
    return int.from_bytes(digest, "big") / 2**64


def rules_fired(
    rules: RuleSet, values: Mapping[str, float], texts: Mapping[str, str | None]
) -> list[tuple[str, str]]:
    """(name, action) of each active rule that fires on one row: ``decide``'s rules without
    pandas, for a single answer that must be fast (a missing or NaN value never fires)."""
    return [
        (rule.name, rule.action)
        for rule in rules.active
        if rule.fires_one(values, texts, rules.lists)
    ]
