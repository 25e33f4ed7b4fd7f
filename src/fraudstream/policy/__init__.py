"""Decision policy: declarative rules combined with the model's thresholds."""

from fraudstream.policy.decide import Decisions, decide, rules_fired
from fraudstream.policy.rules import RulesError, RuleSet, default_rules, load_rules

__all__ = [
    "Decisions",
    "RuleSet",
    "RulesError",
    "decide",
    "default_rules",
    "load_rules",
    "rules_fired",
]
