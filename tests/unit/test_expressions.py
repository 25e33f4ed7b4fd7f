import builtins
import math
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudstream.features import FEATURE_NAMES
from fraudstream.policy.expressions import (
    NUMERIC_NAMES,
    TEXT_FIELDS,
    ExpressionError,
    list_names,
    parse,
)

NAN = math.nan
LISTS = {"blocked_terminals": {"T9"}, "allowed_cards": ["c1"]}


def _fires(source: str, lists: Any = LISTS, **columns: list[Any]) -> list[bool]:
    """Which rows the rule fires on, checked to be the same over the batch and row by row."""
    expression = parse(source)
    batch = {
        name: np.asarray(values, dtype=object if name in TEXT_FIELDS else float)
        for name, values in columns.items()
    }
    fired = expression.evaluate(batch, lists)
    assert fired.dtype == np.bool_
    rows = [
        expression.evaluate_one({name: values[i] for name, values in columns.items()}, lists)
        for i in range(len(fired))
    ]
    assert rows == fired.tolist()
    return rows


def test_the_vocabulary_is_the_feature_names_and_the_text_fields() -> None:
    assert NUMERIC_NAMES == FEATURE_NAMES
    assert "amount" in NUMERIC_NAMES
    assert set(TEXT_FIELDS) == {
        "card_id",
        "terminal_id",
        "channel",
        "merchant_category",
        "currency",
    }


@pytest.mark.parametrize(
    ("source", "columns", "expected"),
    [
        (
            "card_tx_count_1h > 5 and amount > 3 × card_amount_mean_30d",
            {
                "card_tx_count_1h": [6, 6, 5, 9],
                "amount": [301, 300, 900, 400],
                "card_amount_mean_30d": [100, 100, 100, 100],
            },
            [True, False, False, True],
        ),
        ("terminal_id in blocked_terminals", {"terminal_id": ["T9", "T1"]}, [True, False]),
        ("card_id not in allowed_cards", {"card_id": ["c1", "c2"]}, [False, True]),
        (
            'channel == "ecommerce" and merchant_category in ["gambling", "crypto"]',
            {
                "channel": ["ecommerce", "ecommerce", "pos", "ecommerce"],
                "merchant_category": ["crypto", "grocery", "gambling", "gambling"],
            },
            [True, False, False, True],
        ),
        (
            "not (amount <= 100) or card_terminal_speed >= 1000",
            {"amount": [101, 100, 50, 50], "card_terminal_speed": [0, 0, 1000, 999]},
            [True, False, True, False],
        ),
        ("currency != 'EUR'", {"currency": ["EUR", "USD"]}, [False, True]),
        (
            "amount > 10_000 and hour >= .5e1",
            {"amount": [10_001, 10_001], "hour": [5, 4]},
            [True, False],
        ),
        ("hour in [0, 1, -1, 2.5,]", {"hour": [1, 2.5, -1, 3]}, [True, True, True, False]),
        ("channel in []", {"channel": ["pos"]}, [False]),
        ("channel not in []", {"channel": ["pos"]}, [True]),
    ],
)
def test_analysts_rules_parse_and_evaluate(
    source: str, columns: dict[str, list[Any]], expected: list[bool]
) -> None:
    assert _fires(source, **columns) == expected


def test_an_expression_names_the_fields_and_lists_it_reads() -> None:
    expression = parse(
        "terminal_id in blocked_terminals and card_id not in allowed_cards and amount > 1"
    )
    assert expression.names == {"terminal_id", "card_id", "amount"}
    assert expression.lists == list_names(expression) == {"blocked_terminals", "allowed_cards"}
    assert parse("channel in ['a']").lists == frozenset()
    assert expression == parse(expression.source)
    assert "_root" not in repr(expression)


def test_keywords_are_case_insensitive_but_names_are_not() -> None:
    source = "NOT amount > 5 AND channel Not In ['x'] Or hour > 9"
    assert _fires(source, amount=[1, 9], channel=["pos", "x"], hour=[0, 0]) == [True, False]
    with pytest.raises(ExpressionError, match=r"unknown name 'Amount' \(did you mean 'amount'\?\)"):
        parse("Amount > 5")


@pytest.mark.parametrize(
    "source",
    [
        "amount > 100",
        "amount <= 100",
        "amount == 100",
        "amount != 100",
        "channel == 'pos'",
        "channel != 'pos'",
        "channel in ['pos']",
        "channel not in ['pos']",
        "terminal_id in blocked_terminals",
        "terminal_id not in blocked_terminals",
        "hour in [1, 2]",
        "hour not in [1, 2]",
    ],
)
def test_a_rule_on_a_missing_value_never_fires_not_even_under_not(source: str) -> None:
    missing = {"amount": [NAN, None], "hour": [NAN, None]}
    missing |= {"channel": [None, NAN], "terminal_id": [None, NAN]}
    columns = {name: values for name, values in missing.items() if name in parse(source).names}
    assert _fires(source, **columns) == [False, False]
    assert _fires(f"not ({source})", **columns) == [False, False]
    assert _fires(f"not not ({source})", **columns) == [False, False]


def _kleene(value: bool | None) -> str:
    return {True: "true", False: "false", None: "unknown"}[value]


def test_and_or_not_follow_three_valued_logic() -> None:
    """A is `amount > 0`, B is `hour > 0`: 1 is TRUE, -1 is FALSE, NaN is unknown."""
    truth = {1.0: True, -1.0: False, NAN: None}
    pairs = [(a, b) for a in truth for b in truth]
    columns = {"amount": [a for a, _ in pairs], "hour": [b for _, b in pairs]}

    def fires(source: str) -> list[bool]:
        return _fires(source, **columns)

    both = [(truth[a], truth[b]) for a, b in pairs]
    and_ = [False if False in ab else None if None in ab else True for ab in both]
    or_ = [True if True in ab else None if None in ab else False for ab in both]
    assert fires("amount > 0 and hour > 0") == [v is True for v in and_]
    assert fires("not (amount > 0 and hour > 0)") == [v is False for v in and_]
    assert fires("amount > 0 or hour > 0") == [v is True for v in or_]
    assert fires("not (amount > 0 or hour > 0)") == [v is False for v in or_]
    assert [_kleene(v) for v in or_][2] == "true"  # TRUE or unknown is TRUE: the row fires
    assert [_kleene(v) for v in and_][5] == "false"  # FALSE and unknown is FALSE: `not` fires


def test_division_by_zero_is_missing() -> None:
    columns = {"amount": [10, 10, 0], "hour": [0, 2, 0]}
    assert _fires("amount / hour > 1", **columns) == [False, True, False]
    assert _fires("not (amount / hour > 1)", **columns) == [False, False, False]
    assert _fires("amount / hour != 1", **columns) == [False, True, False]


def test_undefined_arithmetic_is_missing() -> None:
    inf = math.inf
    columns = {"amount": [inf, inf, inf], "hour": [0, inf, 1]}  # inf × 0 and inf − inf are NaN
    assert _fires("not (amount * hour < 1)", **columns) == [False, True, True]
    assert _fires("not (amount - hour < 1)", **columns) == [True, False, True]


def test_times_sign_is_the_same_as_star() -> None:
    rng = np.random.default_rng(7)
    columns = {"amount": rng.normal(size=50).tolist(), "hour": rng.normal(size=50).tolist()}
    with_x = _fires("amount × 3 > hour ×2×amount", **columns)
    assert with_x == _fires("amount * 3 > hour *2*amount", **columns)
    assert any(with_x) and not all(with_x)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("amount > 0 or hour > 0 and is_night > 0", True),  # or binds looser than and
        ("(amount > 0 or hour > 0) and is_night > 0", False),
        ("not hour > 0 and is_night > 0", False),  # not binds tighter than and
        ("not (hour > 0 and is_night > 0)", True),
        ("-amount * hour == -6", True),
        ("-amount + 10 == 8", True),  # unary minus binds tighter than +
        ("2 + 3 * 4 == 14 and 2 + 3 × 4 == 14 and (2 + 3) * 4 == 20", True),
        ("10 - 4 - 3 == 3 and 8 / 4 / 2 == 1", True),  # left-associative
        ("--amount == amount and -(-amount) == 2", True),
        ("amount + 1 >= hour and amount * 2 in [4]", True),  # arithmetic binds tighter than in
    ],
)
def test_precedence(source: str, expected: bool) -> None:
    assert _fires(source, amount=[2], hour=[3], is_night=[-1]) == [expected]


def test_a_list_name_missing_from_the_lists_is_empty() -> None:
    terminals = ["T9", "T1", None]
    inside, outside = "terminal_id in blocked_terminals", "terminal_id not in blocked_terminals"
    assert _fires(inside, lists={}, terminal_id=terminals) == [False, False, False]
    assert _fires(outside, lists={}, terminal_id=terminals) == [True, True, False]
    a_tuple = {"blocked_terminals": ("T1",)}  # any collection, not only a set
    assert _fires(inside, lists=a_tuple, terminal_id=terminals) == [False, True, False]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("amont > 1", "column 1: unknown name 'amont' (did you mean 'amount'?)"),
        ("card_tx_count_1h > 5 and amont > 1", "column 26: unknown name 'amont'"),
        (
            "amount > 1 and\n  chanel == 'x'",
            "line 2, column 3: unknown name 'chanel' (did you mean 'channel'?)",
        ),
        ("channel > 1", "column 9: '>' compares two numbers, got text and a number"),
        (
            "amount == 'x'",
            "column 8: '==' compares two numbers or two texts, got a number and text",
        ),
        ("amount + channel > 1", "column 10: '+' needs a number, got text"),
        ("-channel == 'x'", "column 2: '-' needs a number, got text"),
        ("amount", "column 1: a rule must be a true/false condition, got a number"),
        ("channel", "column 1: a rule must be a true/false condition, got text"),
        ("amount > 1 and hour", "column 16: 'and' needs a true/false condition, got a number"),
        ("not amount", "column 5: 'not' needs a true/false condition, got a number"),
        ("(amount > 1) + 1 > 0", "column 1: '+' needs a number, got a true/false condition"),
        ("(amount > 1) == (hour > 1)", "column 14: '==' compares two numbers or two texts"),
        ("(amount > 1) in [1]", "column 1: 'in' needs a number or text"),
        ("channel in ['a', 1]", "column 18: list item is a number, the left side text"),
        ("amount in blocked_terminals", "column 8: list 'blocked_terminals' holds text"),
        ("terminal_id in card_id", "column 16: 'card_id' is a field, not a list"),
        ("terminal_id in Blocked", "column 16: 'Blocked' is not a list name"),
        ("amount > 1 and", "column 15: the expression ends early; expected '(', '-', 'not'"),
        ("amount = 5", "column 8: unexpected character '=' (compare with ==)"),
        ("amount > 1 && hour > 1", "column 12: unexpected character '&' (write 'and')"),
        ("amount < hour < 5", "column 15: unexpected '<'"),
        ("amount > 1 1", "column 12: unexpected '1'"),
        ("channel == \"pos'", "column 12: unexpected character '\"'"),
    ],
)
def test_errors_name_the_position_and_the_problem(source: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=re.escape(message)):
        parse(source)


@pytest.mark.parametrize(
    "source",
    [
        "__import__('os')",
        "__import__('os').system('true') == 0",
        "amount.__class__",
        "amount.__class__ == 1",
        "amount.real > 1",
        'open("x")',
        "len(card_id) > 3",
        "getattr(amount, 'x') > 1",
        "channel[0] == 'e'",
        "channel.upper() == 'POS'",
        "amount > 1; import os",
        "lambda: 1",
        "amount if amount > 1 else hour",
        "[x for x in blocked_terminals]",
        "amount ** 2 > 1",
        "amount > 1 # comment",
        "{'a': 1}",
        "__builtins__ > 0",
        "'a' + 'b' == 'ab'",
        "True",
        "amount > 1 and __class__ > 1",
        "amount in blocked_terminals.__class__",
    ],
)
def test_code_is_not_an_expression(source: str) -> None:
    with pytest.raises(ExpressionError):
        parse(source)


def test_calls_and_attributes_get_a_clear_message() -> None:
    with pytest.raises(ExpressionError, match="column 11: function calls are not part"):
        parse("__import__('os')")
    with pytest.raises(ExpressionError, match=r"column 7: unexpected character '\.' \(attribute"):
        parse("amount.__class__ > 1")


def test_parsing_and_evaluating_never_call_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("eval, exec or compile was called")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, refuse)
    source = "amount > 2 × hour and channel in ['pos']"
    assert _fires(source, amount=[3, 1], hour=[1, 1], channel=["pos", "pos"]) == [True, False]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("", "the expression is empty"),
        (" \n\t ", "the expression is empty"),
        ("amount > 1 or " * 150 + "amount > 1", "2110 characters; at most 2000"),
        ("(" * 60 + "amount > 1" + ")" * 60, "column 51: nested deeper than 50 levels"),
        ("not " * 60 + "amount > 1", "nested deeper than 50 levels"),
        ("-(" * 60 + "amount" + ")" * 60 + " > 1", "nested deeper than 50 levels"),
    ],
)
def test_empty_long_and_deep_input_is_refused(source: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=re.escape(message)):
        parse(source)


def test_long_flat_and_moderately_nested_input_is_accepted() -> None:
    flat = " or ".join(f"amount > {i}" for i in range(120))
    assert len(flat) < 2_000
    assert _fires(flat, amount=[0, 1]) == [False, True]
    assert _fires("(" * 20 + "amount > 1" + ")" * 20, amount=[2]) == [True]


# Property: the batch and the single-row evaluators agree on every row.

_NUMBERS = st.one_of(
    st.none(),
    st.just(NAN),
    st.sampled_from([0.0, -0.0, 1.0, 12.0, 100.0, 1000.0, math.inf, -math.inf]),
    st.floats(allow_nan=True, allow_infinity=True),
)
_TEXTS = st.one_of(
    st.none(),
    st.just(NAN),
    st.sampled_from(["ecommerce", "pos", "gambling", "crypto", "T9", "c1", ""]),
    st.text(max_size=3),
)
_ROW = st.fixed_dictionaries(
    {
        "amount": _NUMBERS,
        "hour": _NUMBERS,
        "card_tx_count_1h": _NUMBERS,
        "card_amount_mean_30d": _NUMBERS,
        "card_terminal_speed": _NUMBERS,
        "channel": _TEXTS,
        "merchant_category": _TEXTS,
        "terminal_id": _TEXTS,
        "card_id": _TEXTS,
    }
)
_EXPRESSIONS = [
    parse(source)
    for source in (
        "card_tx_count_1h > 5 and amount > 3 × card_amount_mean_30d",
        "not (amount <= 100) or card_terminal_speed >= 1000",
        'channel == "ecommerce" and merchant_category in ["gambling", "crypto"]',
        "terminal_id in blocked_terminals or not (card_id not in allowed_cards)",
        "not (amount / (hour - 12) > -amount * 2 - 1) and not (channel != 'pos')",
        "hour in [0, 1, 12, -1] or not (card_amount_mean_30d - amount / 3 >= 0.5 or hour < 1)",
        "not (channel == merchant_category) and not (amount + hour * 0 == amount)",
    )
]


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(_ROW, min_size=1, max_size=12))
def test_batch_and_single_row_evaluation_agree(rows: list[dict[str, Any]]) -> None:
    columns = {
        name: np.asarray(
            [row[name] for row in rows], dtype=object if name in TEXT_FIELDS else float
        )
        for name in rows[0]
    }
    for expression in _EXPRESSIONS:
        batch = expression.evaluate(columns, LISTS)
        assert batch.tolist() == [expression.evaluate_one(row, LISTS) for row in rows], (
            expression.source
        )
