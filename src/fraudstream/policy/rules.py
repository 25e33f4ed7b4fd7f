"""Declarative, versioned decision rules: from a TOML file, or authored by analysts and
published through the rule book (``store/rulebook.py``) without a restart.

A rule's trigger is an expression (``when = "card_tx_count_1h > 5 and amount > 3 ×
card_amount_mean_30d"``, ``policy/expressions.py``; lists by name: ``terminal_id in
blocked_terminals``), a one-feature threshold (``when = {feature, above|below}``), or an inline
list of terminals or cards. Its action: ``review`` or ``decline`` force at least that;
``allow`` approves whatever the model or a review rule says, but never overrides a rule's
decline.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Mapping
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from fraudstream.features import FEATURE_NAMES
from fraudstream.policy.expressions import Expression, ExpressionError, parse

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "Condition",
    "Exploration",
    "Rule",
    "RuleSet",
    "RulesError",
    "default_rules",
    "load_rules",
    "rules_from",
]


class RulesError(ValueError):
    """The rules file is unreadable or invalid; the message names the rule and the field."""


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    feature: str
    above: float | None = None
    below: float | None = None

    @model_validator(mode="after")
    def _check(self) -> Condition:
        if self.feature not in FEATURE_NAMES:
            raise ValueError(f"unknown feature {self.feature!r}")
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of 'above' or 'below'")
        return self


Texts = Mapping[str, np.ndarray]
"""Text fields of a batch by name (``expressions.TEXT_FIELDS``); an absent one is missing."""


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    action: Literal["review", "decline", "allow"]
    when: Condition | str | None = None
    terminals: frozenset[str] = frozenset()
    cards: frozenset[str] = frozenset()
    enabled: bool = True
    _expression: Expression | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _one_trigger(self) -> Rule:
        given = self.model_fields_set
        triggers = sum([self.when is not None, "terminals" in given, "cards" in given])
        if triggers != 1:
            raise ValueError("a rule needs exactly one of 'when', 'terminals' or 'cards'")
        if isinstance(self.when, str):
            try:
                self._expression = parse(self.when)
            except ExpressionError as error:
                raise ValueError(f"when: {error}") from None
        return self

    @property
    def reads(self) -> frozenset[str]:
        """The features and text fields the rule reads."""
        if self._expression is not None:
            return self._expression.names
        if isinstance(self.when, Condition):
            return frozenset({self.when.feature})
        return frozenset({"terminal_id" if self.by_terminal else "card_id"})

    @property
    def by_terminal(self) -> bool:
        """An inline list rule of terminals (else of cards); either may be empty."""
        return "terminals" in self.model_fields_set

    @property
    def lists(self) -> frozenset[str]:
        """The live lists the rule reads."""
        return frozenset() if self._expression is None else self._expression.lists

    def fired(
        self, features: Mapping[str, np.ndarray], texts: Texts, lists: Mapping[str, Collection[str]]
    ) -> np.ndarray:
        """Where the rule fires in a batch (a missing value never fires)."""
        if self._expression is not None:
            n = len(next(iter(features.values())))
            columns = {
                name: features[name] if name in features else texts.get(name, np.full(n, None))
                for name in self._expression.names
            }
            return self._expression.evaluate(columns, lists)
        if isinstance(self.when, Condition):
            values = np.asarray(features[self.when.feature], dtype=float)
            with np.errstate(invalid="ignore"):
                above, below = self.when.above, self.when.below
                return values > above if above is not None else values < below
        if self.by_terminal:
            return np.isin(texts["terminal_id"], list(self.terminals))
        return np.isin(texts["card_id"], list(self.cards))

    def fires_one(
        self,
        values: Mapping[str, float],
        texts: Mapping[str, str | None],
        lists: Mapping[str, Collection[str]],
    ) -> bool:
        """``fired`` for one row, without numpy: the decision API's fallback."""
        if self._expression is not None:
            row: dict[str, float | str | None] = {**values, **texts}
            return self._expression.evaluate_one(
                {name: row.get(name) for name in self._expression.names}, lists
            )
        if isinstance(self.when, Condition):
            value = values.get(self.when.feature, float("nan"))
            above, below = self.when.above, self.when.below
            return bool(value > above if above is not None else value < below)  # type: ignore[operator]
        if self.by_terminal:
            return texts.get("terminal_id") in self.terminals
        return texts.get("card_id") in self.cards


class Exploration(BaseModel):
    """Selective labels (docs/model.md): a declined transaction never gets an outcome. A
    ``share`` of the would-be declines the model alone makes, at most ``max_amount`` each,
    goes to review instead, chosen by a hash of the tx_id (the same in every engine and on
    every replay); their outcomes estimate decline precision and weight later training."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    share: float = Field(gt=0, le=0.2)
    max_amount: float = Field(gt=0)


class RuleSet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(min_length=1, max_length=64)
    rule: tuple[Rule, ...] = ()
    explore: Exploration | None = None
    lists: dict[str, frozenset[str]] = Field(default_factory=dict, exclude=True)
    """The live lists' entries at the time (``store/lists.py``), by list name."""

    @model_validator(mode="after")
    def _unique_names(self) -> RuleSet:
        names = [r.name for r in self.rule]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique: {', '.join(duplicates)}")
        return self

    @property
    def active(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rule if r.enabled)


def _parse(text: str, origin: str) -> RuleSet:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RulesError(f"{origin} is not valid TOML: {error}") from None
    return rules_from(data, origin)


def rules_from(data: Mapping[str, object], origin: str) -> RuleSet:
    """A rule set from its mapping (a parsed file, or a stored version); errors name the rule
    and the field."""
    try:
        return RuleSet.model_validate(data)
    except ValidationError as error:
        problems = []
        for issue in error.errors():
            location = ".".join(str(part) for part in issue["loc"])
            if location.startswith("rule."):
                index = int(location.split(".")[1])
                names: list[dict[str, object]] = data.get("rule", [])  # type: ignore[assignment]
                name = names[index].get("name", f"#{index + 1}") if index < len(names) else index
                location = f"rule {name!r}" + location[len(f"rule.{index}") :]
            problems.append(f"{location}: {issue['msg']}")
        raise RulesError(f"invalid rules in {origin}:\n  " + "\n  ".join(problems)) from None


def load_rules(path: Path) -> RuleSet:
    try:
        text = path.read_text()
    except OSError as error:
        raise RulesError(f"cannot read rules file {path}: {error.strerror}") from None
    return _parse(text, str(path))


def default_rules() -> RuleSet:
    text = resources.files("fraudstream.policy").joinpath("default_rules.toml").read_text()
    return _parse(text, "the default rules")
