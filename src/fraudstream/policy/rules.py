"""Declarative, versioned decision rules, loaded from a TOML file that needs no code change.

A rule names a condition on one feature (``above`` / ``below`` a value) or a list of terminals
or cards, and the action it forces (``review`` or ``decline``).
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fraudstream.features import FEATURE_NAMES

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


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    action: Literal["review", "decline"]
    when: Condition | None = None
    terminals: frozenset[str] = frozenset()
    cards: frozenset[str] = frozenset()
    enabled: bool = True

    @model_validator(mode="after")
    def _one_trigger(self) -> Rule:
        given = self.model_fields_set
        triggers = sum([self.when is not None, "terminals" in given, "cards" in given])
        if triggers != 1:
            raise ValueError("a rule needs exactly one of 'when', 'terminals' or 'cards'")
        return self


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
    try:
        return RuleSet.model_validate(data)
    except ValidationError as error:
        problems = []
        for issue in error.errors():
            location = ".".join(str(part) for part in issue["loc"])
            if location.startswith("rule."):
                index = int(location.split(".")[1])
                names = data.get("rule", [])
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
