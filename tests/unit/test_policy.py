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
    result = decide(
        scores, features, {"terminal_id": terminals, "card_id": cards}, THRESHOLDS, rules
    )
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
        {"terminal_id": np.array(["T", "T"]), "card_id": np.array(["c", "d"])},
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


def test_exploration_sends_a_share_of_the_models_declines_to_review() -> None:
    from fraudstream.config import load_settings
    from fraudstream.engines.base import decision_rules
    from fraudstream.policy.decide import EXPLORE, explore_draw

    n = 20_000
    features = pd.DataFrame(0.0, index=range(n), columns=list(FEATURE_NAMES))
    features["amount"] = np.where(np.arange(n) % 4 == 0, 5_000.0, 50.0)  # a quarter over the cap
    tx_ids = np.array([f"tx-{i}" for i in range(n)], dtype=object)
    scores = np.full(n, 0.99)  # every row a decline by the model
    thresholds = {"review": 0.5, "decline": 0.9}
    settings = load_settings(overrides={"policy.explore_share": "0.05"})
    rules = decision_rules(settings)
    assert rules.explore is not None and rules.version.endswith("+explore0.05")
    ids = {"terminal_id": tx_ids, "card_id": tx_ids}
    got = decide(
        scores,
        features,
        {"terminal_id": tx_ids, "card_id": tx_ids},
        thresholds,
        rules,
        tx_ids=tx_ids,
    )
    explored = np.array([EXPLORE in hits for hits in got.rule_hits])
    assert (got.decision[explored] == "review").all() and (
        got.decision[~explored] == "decline"
    ).all()
    assert not explored[features["amount"].to_numpy() > 200].any()  # the loss cap
    share = explored.sum() / (features["amount"] <= 200).sum()
    assert 0.04 < share < 0.06
    # The same rows whatever the batch: the draw is the tx_id's.
    backwards = {name: values[::-1] for name, values in ids.items()}
    again = decide(scores[::-1], features[::-1], backwards, thresholds, rules, tx_ids=tx_ids[::-1])
    assert (np.array([EXPLORE in h for h in again.rule_hits])[::-1] == explored).all()
    assert explore_draw("tx-1") == explore_draw("tx-1")
    # Off by default, and a rule's decline is never explored.
    default = decision_rules(load_settings())
    plain = decide(scores, features, ids, thresholds, default, tx_ids=tx_ids)
    assert (plain.decision == "decline").all()
    ruled = rules.model_copy(update={"rule": (*rules.rule, *load_rules_text(
        '[[rule]]\nname = "big"\naction = "decline"\nwhen = { feature = "amount", below = 1e9 }'
    ).rule)})  # fmt: skip
    assert (decide(scores, features, ids, thresholds, ruled, tx_ids=tx_ids).decision
            == "decline").all()  # fmt: skip


def load_rules_text(body: str):  # type: ignore[no-untyped-def]
    from fraudstream.policy.rules import _parse

    return _parse('version = "t"\n' + body, "test")


def test_expression_rules_lists_and_allow_decide_as_documented() -> None:
    """An expression over features and text fields, a named live list, and an allow rule
    that approves what the model or a review rule flagged but never overrides a decline."""
    rules = load_rules_text(
        '[[rule]]\nname = "burst"\naction = "review"\n'
        'when = "card_tx_count_1h > 5 and amount > 3 × card_amount_mean_30d"\n'
        '[[rule]]\nname = "blocked"\naction = "decline"\n'
        'when = "terminal_id in blocked_terminals"\n'
        '[[rule]]\nname = "vip"\naction = "allow"\nwhen = "card_id in allowed_cards"\n'
    ).model_copy(update={"lists": {"blocked_terminals": frozenset({"T9"}),
                                    "allowed_cards": frozenset({"c3", "c4"})}})  # fmt: skip
    features = _features(
        amount=[100, 100, 100, 100, 100], card_tx_count_1h=[6, 6, 1, 6, 1],
        card_amount_mean_30d=[10, 50, 10, 10, np.nan],
    )  # fmt: skip
    texts = {
        "terminal_id": np.array(["T1", "T1", "T1", "T9", "T1"], dtype=object),
        "card_id": np.array(["c1", "c2", "c3", "c4", "c5"], dtype=object),
    }
    scores = np.array([0.1, 0.1, 0.99, 0.1, 0.1])
    result = decide(scores, features, texts, THRESHOLDS, rules)
    assert list(result.decision) == ["review", "approve", "approve", "decline", "approve"]
    assert result.rule_hits == [["burst"], [], ["vip"], ["burst", "blocked", "vip"], []]
    assert rules.rule[0].reads == {"card_tx_count_1h", "amount", "card_amount_mean_30d"}
    assert rules.rule[1].lists == {"blocked_terminals"}


def test_a_bad_expression_names_the_rule_and_the_position() -> None:
    with pytest.raises(RulesError, match=r"rule 'typo'.*column 1: unknown name 'amont'"):
        load_rules_text('[[rule]]\nname = "typo"\naction = "review"\nwhen = "amont > 5"\n')
