"""Rules + model thresholds → approve / review / decline, vectorised over a batch."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fraudstream.policy.rules import RuleSet

__all__ = ["DECISIONS", "Decisions", "decide", "rules_fired"]

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
) -> Decisions:
    """The stronger of the model's decision (by threshold) and every rule that fires."""
    severity = np.where(
        scores >= thresholds["decline"], 2, np.where(scores >= thresholds["review"], 1, 0)
    )
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
    return Decisions(decision=DECISIONS[severity], rule_hits=hits, rules_version=rules.version)


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
