"""Rules + model thresholds → approve / review / decline, vectorised over a batch."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fraudstream.policy.rules import RuleSet

__all__ = ["DECISIONS", "EXPLORE", "Decisions", "decide", "explore_draw", "rules_fired"]

DECISIONS = np.array(["approve", "review", "decline"], dtype=object)
_SEVERITY = {"review": 1, "decline": 2}


@dataclass(frozen=True)
class Decisions:
    decision: np.ndarray  # object array of "approve" | "review" | "decline"
    rule_hits: list[list[str]]  # names of the rules that fired, per row
    rules_version: str


def decide(
    scores: np.ndarray,
    features: pd.DataFrame,
    terminal_ids: np.ndarray,
    card_ids: np.ndarray,
    thresholds: dict[str, float],
    rules: RuleSet,
    tx_ids: np.ndarray | None = None,
) -> Decisions:
    """The stronger of the model's decision (by threshold) and every rule that fires; with
    ``rules.explore`` and ``tx_ids``, a share of the model's own declines goes to review
    (rule hit ``explore``)."""
    model = np.where(
        scores >= thresholds["decline"], 2, np.where(scores >= thresholds["review"], 1, 0)
    )
    severity = model.copy()
    hits: list[list[str]] = [[] for _ in range(len(scores))]
    for rule in rules.active:
        if rule.when is not None:
            values = features[rule.when.feature].to_numpy(dtype=float)
            with np.errstate(invalid="ignore"):
                fired = (
                    values > rule.when.above
                    if rule.when.above is not None
                    else values < rule.when.below
                )
        elif rule.terminals:
            fired = np.isin(terminal_ids, list(rule.terminals))
        else:
            fired = np.isin(card_ids, list(rule.cards))
        for row in np.flatnonzero(fired):
            hits[row].append(rule.name)
        severity = np.where(fired, np.maximum(severity, _SEVERITY[rule.action]), severity)
        if rule.action == "decline":
            model = np.where(fired, -1, model)  # a rule's decline is policy: never explored
    if rules.explore is not None and tx_ids is not None:
        amounts = features["amount"].to_numpy(dtype=float)
        for row in np.flatnonzero((model == 2) & (amounts <= rules.explore.max_amount)):
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
    rules: RuleSet, values: Mapping[str, float], terminal_id: str, card_id: str
) -> list[tuple[str, str]]:
    """(name, action) of each active rule that fires on one row: ``decide``'s rules without
    pandas, for a single answer that must be fast (a missing or NaN value never fires)."""
    fired: list[tuple[str, str]] = []
    for rule in rules.active:
        if rule.when is not None:
            value = values.get(rule.when.feature, math.nan)
            hit = (
                value > rule.when.above if rule.when.above is not None else value < rule.when.below  # type: ignore[operator]
            )
        elif rule.terminals:
            hit = terminal_id in rule.terminals
        else:
            hit = card_id in rule.cards
        if hit:
            fired.append((rule.name, rule.action))
    return fired
