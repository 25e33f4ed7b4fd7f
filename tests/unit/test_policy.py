import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fraudstream.features import FEATURE_NAMES
from fraudstream.policy import RulesError, decide, default_rules, load_rules

THRESHOLDS = {"review": 0.3, "decline": 0.8}


def _features(**columns: list[float]) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    frame = pd.DataFrame({name: np.zeros(n) for name in FEATURE_NAMES})
    for name, values in columns.items():
        frame[name] = values
    return frame


def test_thresholds_and_rules_take_the_stronger_decision(tmp_path: Path) -> None:
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(
        'version = "t1"\n'
        '[[rule]]\nname = "big"\naction = "decline"\nwhen = { feature = "amount", above = 1000 }\n'
        '[[rule]]\nname = "fast"\naction = "review"\n'
        'when = { feature = "card_tx_count_1h", above = 5 }\n'
        '[[rule]]\nname = "blocked"\naction = "decline"\nterminals = ["T9"]\n'
        '[[rule]]\nname = "watch"\naction = "review"\ncards = ["c7"]\nenabled = false\n'
    )
    rules = load_rules(rules_file)
    scores = np.array([0.1, 0.5, 0.9, 0.1, 0.1, 0.5, 0.1])
    features = _features(
        amount=[10, 10, 10, 5000, 10, 5000, 10],
        card_tx_count_1h=[1, 1, 1, 1, 9, 1, 1],
    )
    terminals = np.array(["T1", "T1", "T1", "T1", "T1", "T1", "T9"])
    cards = np.array(["c1", "c2", "c3", "c4", "c5", "c6", "c7"])
    result = decide(scores, features, terminals, cards, THRESHOLDS, rules)
    assert list(result.decision) == [
        "approve", "review", "decline", "decline", "review", "decline", "decline",
    ]  # fmt: skip
    assert result.rule_hits == [[], [], [], ["big"], ["fast"], ["big"], ["blocked"]]
    assert result.rules_version == "t1"


def test_missing_feature_values_never_fire_a_rule() -> None:
    features = _features(card_terminal_speed=[np.nan, 5000.0])
    result = decide(
        np.zeros(2),
        features,
        np.array(["T", "T"]),
        np.array(["c", "d"]),
        THRESHOLDS,
        default_rules(),
    )
    assert result.rule_hits == [[], ["impossible_travel_speed"]]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            '[[rule]]\nname = "x"\naction = "review"\nwhen = { feature = "amount", above = 1 }\n',
            "version: Field required",
        ),
        (
            'version = "1"\n[[rule]]\nname = "x"\naction = "block"\nterminals = ["T"]\n',
            "rule 'x'.action",
        ),
        (
            'version = "1"\n[[rule]]\nname = "x"\naction = "review"\n'
            'when = { feature = "amout", above = 1 }\n',
            "unknown feature 'amout'",
        ),
        (
            'version = "1"\n[[rule]]\nname = "x"\naction = "review"\n',
            "exactly one of 'when', 'terminals' or 'cards'",
        ),
        (
            'version = "1"\n[[rule]]\nname = "x"\naction = "review"\ncards = ["c"]\ncolour = 1\n',
            "rule 'x'.colour: Extra inputs",
        ),
        (
            'version = "1"\n[[rule]]\nname = "x"\naction = "review"\ncards = ["c"]\n'
            '[[rule]]\nname = "x"\naction = "review"\ncards = ["d"]\n',
            "rule names must be unique: x",
        ),
        ("version = \n", "is not valid TOML"),
    ],
)
def test_invalid_rules_are_explained(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(body)
    with pytest.raises(RulesError, match=re.escape(message)):
        load_rules(path)


def test_default_rules_load_and_missing_files_are_named(tmp_path: Path) -> None:
    rules = default_rules()
    assert rules.version and {r.name for r in rules.active} == {
        "amount_over_limit", "card_velocity_1h", "impossible_travel_speed",
    }  # fmt: skip
    with pytest.raises(RulesError, match="cannot read rules file"):
        load_rules(tmp_path / "absent.toml")
