"""The profile summary of the benchmarks: py-spy's collapsed stacks → shares per function."""

from __future__ import annotations

from bench.profile import parse

STACKS = [
    "<module> (fraudstream/__main__.py:3);process (/x/src/fraudstream/engines/local.py:270);"
    "score (/x/src/fraudstream/model/scoring.py:34);predict (/v/site-packages/xgboost/core.py:9) 6",
    "<module> (fraudstream/__main__.py:3);process (/x/src/fraudstream/engines/local.py:281);"
    "compute (/x/src/fraudstream/features/card.py:50) 3",
    "<module> (fraudstream/__main__.py:3);process (/x/src/fraudstream/engines/local.py:270);"
    "process (/x/src/fraudstream/engines/local.py:290) 1",  # recursion counts once
    "not a stack line",
]


def test_shares_are_per_function_whatever_the_line() -> None:
    profile = parse(STACKS)
    assert profile.samples == 10
    inside = dict(profile.inclusive)
    assert inside["process (fraudstream/engines/local.py)"] == 1.0
    assert inside["score (fraudstream/model/scoring.py)"] == 0.6
    assert "predict (xgboost/core.py)" not in inside  # only our own functions
    assert profile.own[0] == ("predict (xgboost/core.py)", 0.6)
    assert dict(profile.own)["compute (fraudstream/features/card.py)"] == 0.3


def test_the_markdown_table_lists_both_views() -> None:
    text = parse(STACKS).markdown(top=3)
    assert "10 samples" in text
    assert (
        "| `process (fraudstream/engines/local.py)` | 100% | | `predict (xgboost/core.py)` | 60% |"
        in text
    )
