"""The engine's pure step: records waiting for their terminal table, duplicates told apart,
late records flagged, and a failing row kept from failing its batch."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudstream.engines import step as step_module
from fraudstream.engines.step import Decoded, PartitionState, StepResult, blocked_at, step
from fraudstream.features import FEATURE_NAMES
from fraudstream.features.card import card_features as features_of_cards
from fraudstream.policy import default_rules
from fraudstream.records import StoredId
from fraudstream.schema import Invalid, Transaction, content_digest

from .step_kit import TOPIC, FakeScorer, decoded, tables, transaction

T0 = datetime(2026, 3, 10, 12, tzinfo=timezone.utc)
DAY = np.datetime64("2026-03-10", "D")
LATENESS = timedelta(hours=1)
SCORED_AT = datetime(2026, 3, 11, tzinfo=timezone.utc)
RULES = default_rules()


def _states(*partitions: int) -> dict[int, PartitionState]:
    return {partition: PartitionState() for partition in partitions}


def _step(
    items: list[Decoded],
    states: Mapping[int, PartitionState],
    stored: Mapping[str, StoredId] | None = None,
    scorer: FakeScorer | None = None,
) -> StepResult:
    return step(
        items, states, tables(DAY - 1, DAY, DAY + 1), stored or {},
        scorer=scorer or FakeScorer(), rules=RULES,  # type: ignore[arg-type]
        scored_at=SCORED_AT, engine="test", lateness=LATENESS,
    )  # fmt: skip


def _stored(result: StepResult) -> dict[str, StoredId]:
    """What the sink would answer for the rows of ``result``."""
    return {
        row.tx_id: StoredId(int(row.content_hash), int(row.kafka_partition), int(row.kafka_offset))
        for row in result.predictions.itertuples()
    }


def _features(result: StepResult) -> pd.DataFrame:
    return result.features.set_axis(result.predictions["tx_id"].to_numpy())


def _reasons(result: StepResult) -> dict[tuple[int, int], str]:
    return {(r.partition, r.offset): r.reason for r in result.rejected}


def _cards(states: Mapping[int, PartitionState]) -> dict[int, bytes]:
    return {partition: state.cards.to_bytes() for partition, state in states.items()}


# --- blocked_at ------------------------------------------------------------------------


def test_blocked_at_cuts_each_partition_at_its_first_record_without_a_table() -> None:
    day1, day2 = T0, T0 + timedelta(days=1)
    bad = Invalid("not valid JSON")
    items = [
        decoded(0, 0, transaction("a", day1)),
        decoded(1, 0, bad),
        decoded(0, 1, bad),  # invalid records have no day: they pass
        decoded(0, 2, transaction("b", day2)),  # no table for day 2: partition 0 waits here
        decoded(1, 1, transaction("c", day1)),
        decoded(0, 3, transaction("d", day1)),  # behind the cut, though its table is there
        decoded(0, 4, bad),  # behind the cut too
        decoded(1, 2, transaction("e", day1)),
    ]
    ready, waiting = blocked_at(items, {DAY})
    assert [(i.partition, i.offset) for i in ready] == [(0, 0), (1, 0), (0, 1), (1, 1), (1, 2)]
    assert waiting == {0: items[3]}
    assert blocked_at(items, {DAY, DAY + 1}) == (items, {})
    ready, waiting = blocked_at(items, set())
    assert [(i.partition, i.offset) for i in ready] == [(1, 0)]
    assert {p: (i.partition, i.offset) for p, i in waiting.items()} == {0: (0, 0), 1: (1, 1)}


@settings(max_examples=200, deadline=None)
@given(
    kinds=st.lists(st.tuples(st.integers(0, 2), st.none() | st.integers(0, 3)), max_size=30),
    available=st.sets(st.integers(0, 3)),
)
def test_blocked_at_keeps_the_longest_ready_prefix_of_each_partition(
    kinds: list[tuple[int, int | None]], available: set[int]
) -> None:
    offsets: dict[int, int] = {}
    items: list[Decoded] = []
    for partition, day in kinds:
        offset = offsets[partition] = offsets.get(partition, -1) + 1
        record = (
            Invalid("bad") if day is None else transaction(f"t{len(items)}", T0 + timedelta(day))
        )
        items.append(decoded(partition, offset, record))
    ready, waiting = blocked_at(items, {DAY + d for d in available})
    for partition in offsets:
        log = [i for i in items if i.partition == partition]
        cut = next(
            (n for n, (_, day) in enumerate(k for k in kinds if k[0] == partition)
             if day is not None and day not in available),
            len(log),
        )  # fmt: skip
        assert [i for i in ready if i.partition == partition] == log[:cut]
        assert waiting.get(partition) == (log[cut] if cut < len(log) else None)
    assert ready == [i for i in items if i in ready]  # log order kept


# --- duplicates ------------------------------------------------------------------------


def test_an_identical_tx_id_from_another_message_is_a_replay_and_changes_nothing() -> None:
    states = _states(0, 1)
    a, b = transaction("a", T0), transaction("b", T0 + timedelta(minutes=5), amount=30.0)
    first = _step([decoded(0, 0, a), decoded(0, 1, b)], states)
    assert list(first.predictions["tx_id"]) == ["a", "b"] and not first.rejected
    stored = _stored(first)
    assert stored["a"] == StoredId(content_digest(a), 0, 0)
    cards = _cards(states)

    later = transaction("z", T0 + timedelta(hours=3), card="c1")
    # "b" again at the same offset of another partition: another message, not a redelivery.
    again = _step([decoded(0, 7, a), decoded(1, 1, b), decoded(0, 8, later)], states, stored)
    assert list(again.predictions["tx_id"]) == ["z"]
    assert _reasons(again) == {
        (0, 7): "replay: tx_id 'a' was already processed with identical content "
        "(partition 0, offset 0)",
        (1, 1): "replay: tx_id 'b' was already processed with identical content "
        "(partition 0, offset 1)",
    }
    assert (again.replays, again.conflicts, again.redelivered) == (2, 0, frozenset())
    # Partition 1 learnt nothing from the replayed "b"; card c1 has a, b and z, once each.
    assert _cards(states)[1] == cards[1] == _cards(_states(1))[1]
    z = _features(again).loc["z"]
    assert (z["card_tx_count_1d"], z["card_amount_mean_1d"]) == (3, pytest.approx(50 / 3))
    assert z["card_seconds_since_prev"] == 3 * 3600 - 5 * 60


def test_a_reused_tx_id_with_other_content_is_a_conflict_and_changes_nothing() -> None:
    states = _states(0)
    a = transaction("a", T0)
    stored = _stored(_step([decoded(0, 0, a)], states))
    cards = _cards(states)
    other = [
        transaction("a", T0, amount=10.01),
        transaction("a", T0 + timedelta(microseconds=1)),
        transaction("a", T0, card="c2"),
        transaction("a", T0, terminal="T2"),
    ]
    result = _step([decoded(0, 1 + n, tx) for n, tx in enumerate(other)], states, stored)
    assert result.predictions.empty and (result.replays, result.conflicts) == (0, 4)
    assert set(_reasons(result).values()) == {
        "duplicate tx_id with different content: 'a' was first seen at partition 0, offset 0"
    }
    assert _cards(states) == cards


def test_duplicates_inside_one_batch_are_told_apart_the_same_way() -> None:
    states = _states(0, 1)
    x = transaction("x", T0)
    items = [
        decoded(1, 4, x),
        decoded(0, 2, x),
        decoded(1, 5, transaction("x", T0, amount=99.0)),
    ]
    result = _step(items, states)
    assert list(result.predictions["tx_id"]) == ["x"]
    assert list(result.predictions["kafka_offset"]) == [4]
    assert _reasons(result) == {
        (0, 2): "replay: tx_id 'x' was already processed with identical content "
        "(partition 1, offset 4)",
        (1, 5): "duplicate tx_id with different content: 'x' was first seen at partition 1, "
        "offset 4",
    }
    assert (result.replays, result.conflicts) == (1, 1)
    assert _cards(states)[0] == _cards(_states(0))[0]  # the replay on partition 0 stored nothing


def test_the_same_message_again_is_processed_again_and_named_redelivered() -> None:
    """After a crash the engine reads again from its last snapshot: messages whose rows were
    stored since are the same partition and offset, and give the same rows again."""
    items = [
        decoded(0, 0, transaction("a", T0)),
        decoded(0, 1, transaction("b", T0 + timedelta(minutes=1), amount=900.0)),
    ]
    first = _step(items, _states(0))
    stored = _stored(first)
    again = _step([*items, decoded(0, 2, items[0].record)], _states(0), stored)
    assert again.redelivered == frozenset({"a", "b"})
    assert _reasons(again) == {
        (0, 2): "replay: tx_id 'a' was already processed with identical content "
        "(partition 0, offset 0)"
    }
    pd.testing.assert_frame_equal(again.predictions, first.predictions)
    pd.testing.assert_frame_equal(again.features, first.features)
    assert first.redelivered == frozenset()


# --- lateness --------------------------------------------------------------------------


def test_records_more_than_the_lateness_behind_their_partition_are_late() -> None:
    states = _states(0, 1)
    hour = timedelta(hours=1)
    items = [
        decoded(0, 0, transaction("p0-noon", T0)),
        decoded(0, 1, transaction("p0-late", T0 - 1.5 * hour)),
        decoded(0, 2, transaction("p0-in-time", T0 - 0.5 * hour)),
        decoded(0, 3, transaction("p0-just-late", T0 - hour - timedelta(microseconds=1))),
        decoded(0, 4, transaction("p0-on-the-bound", T0 - hour)),
        decoded(1, 0, transaction("p1-ten", T0 - 2 * hour, card="c2")),  # its own watermark
    ]
    result = _step(items, states)
    late = dict(zip(result.predictions["tx_id"], result.predictions["late"], strict=True))
    assert late == {
        "p0-noon": False, "p0-late": True, "p0-in-time": False, "p0-just-late": True,
        "p0-on-the-bound": False, "p1-ten": False,
    }  # fmt: skip
    assert result.late == 2
    assert list(result.batch["late"]) == list(result.predictions["late"])
    assert (states[0].watermark, states[1].watermark) == (_micros(T0), _micros(T0 - 2 * hour))

    # The watermark carries over to the next step.
    result = _step([decoded(1, 1, transaction("p1-early", T0 - 4 * hour, card="c2"))], states)
    assert list(result.predictions["late"]) == [True] and result.late == 1


def test_a_duplicate_still_moves_its_partitions_watermark() -> None:
    """The watermark is a property of the log: the same whatever is made of each record."""
    states = _states(0)
    a = transaction("a", T0)
    stored = _stored(_step([decoded(0, 0, a)], states))
    replay = transaction("a", T0 + timedelta(hours=5), amount=1.0)  # a conflict, much later
    result = _step(
        [decoded(0, 1, replay), decoded(0, 2, transaction("b", T0 + timedelta(hours=3)))],
        states,
        stored,
    )
    assert result.conflicts == 1
    assert states[0].watermark == _micros(T0 + timedelta(hours=5))
    assert list(result.predictions["late"]) == [True]


def _micros(when: datetime) -> int:
    return int(pd.Timestamp(when).value // 1000)


# --- failing rows ------------------------------------------------------------------------


def _mixed_items(bad: Transaction) -> list[Decoded]:
    return [
        decoded(0, 0, transaction("a", T0)),
        decoded(1, 0, transaction("d", T0, card="c2", amount=45.0)),
        decoded(0, 1, bad),
        decoded(0, 2, transaction("c", T0 + timedelta(minutes=3), amount=20.0)),
        decoded(1, 1, Invalid("not valid JSON: boom")),
    ]


def _without(items: list[Decoded], tx_id: str) -> list[Decoded]:
    return [i for i in items if getattr(i.record, "tx_id", None) != tx_id]


def _assert_only_bad_left_out(
    result: StepResult, items: list[Decoded], reason: str, clean: StepResult
) -> None:
    """Only the bad row is rejected (besides the invalid record), and every other row has
    exactly the features and score it has in ``clean``."""
    assert _reasons(result) == {(0, 1): reason, (1, 1): "not valid JSON: boom"}
    letter = next(r for r in result.rejected if r.offset == 1 and r.partition == 0)
    assert (letter.topic, letter.value) == (TOPIC, items[2].value)
    assert sorted(result.predictions["tx_id"]) == ["a", "c", "d"]
    assert list(result.batch["tx_id"]) == list(result.predictions["tx_id"])
    expected = _features(clean).drop(index="b", errors="ignore").sort_index()
    pd.testing.assert_frame_equal(_features(result).sort_index(), expected, check_exact=True)
    scores = clean.predictions.set_index("tx_id")["score"].drop(index="b", errors="ignore")
    assert result.predictions.set_index("tx_id")["score"].sort_index().equals(scores.sort_index())


def test_a_row_the_model_cannot_score_is_rejected_alone() -> None:
    items = _mixed_items(transaction("b", T0 + timedelta(minutes=1), amount=666.0))
    result = _step(items, _states(0, 1), scorer=FakeScorer(fail_score=666.0))
    # Its features were computed: the payment stays in its card's history, as in training.
    clean = _step(items, _states(0, 1))
    _assert_only_bad_left_out(
        result, items, "scoring failed: ValueError: cannot score an amount of 666.0", clean
    )


def test_a_row_the_model_cannot_explain_is_rejected_alone() -> None:
    # Amounts over 10,000 are declined by the default rules, so they are explained.
    items = _mixed_items(transaction("b", T0 + timedelta(minutes=1), amount=20_001.0))
    items[3] = decoded(0, 2, transaction("c", T0 + timedelta(minutes=3), amount=20_000.0))
    result = _step(items, _states(0, 1), scorer=FakeScorer(fail_explain=20_001.0))
    clean = _step(items, _states(0, 1))
    _assert_only_bad_left_out(
        result, items, "explanation failed: ValueError: cannot explain an amount of 20001.0", clean
    )
    c = result.predictions.set_index("tx_id").loc["c"]
    assert c["decision"] == "decline" and c["rule_hits"] == ["amount_over_limit"]
    assert [r["feature"] for r in c["reasons"]] == FakeScorer().names[:3]


def test_a_row_whose_features_fail_is_rejected_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    real = features_of_cards

    def card_features(cards, batch):  # type: ignore[no-untyped-def]
        if (batch.card_ids == "cursed").any():
            raise RuntimeError("card history unreadable")  # before touching any state
        return real(cards, batch)

    monkeypatch.setattr(step_module, "card_features", card_features)
    items = _mixed_items(transaction("b", T0 + timedelta(minutes=1), card="cursed"))
    states = _states(0, 1)
    result = _step(items, states)
    monkeypatch.undo()
    # Its card features could not be computed: it is in no card's history.
    clean = _step(_without(items, "b"), _states(0, 1))
    _assert_only_bad_left_out(
        result, items, "features failed: RuntimeError: card history unreadable", clean
    )
    assert set(states[0].cards.cards) == {"c1"} and set(states[1].cards.cards) == {"c2"}


def test_rows_failing_in_scoring_and_in_explaining_are_each_named() -> None:
    """A row that fails to explain, after another failed to score, is still the right one."""
    items = [
        decoded(0, 0, transaction("s", T0, amount=666.0)),
        decoded(0, 1, transaction("a", T0 + timedelta(minutes=1), amount=20_000.0)),
        decoded(0, 2, transaction("e", T0 + timedelta(minutes=2), amount=20_001.0)),
        decoded(0, 3, transaction("z", T0 + timedelta(minutes=3), amount=20_002.0)),
    ]
    result = _step(items, _states(0), scorer=FakeScorer(fail_score=666.0, fail_explain=20_001.0))
    assert _reasons(result) == {
        (0, 0): "scoring failed: ValueError: cannot score an amount of 666.0",
        (0, 2): "explanation failed: ValueError: cannot explain an amount of 20001.0",
    }
    assert list(result.predictions["tx_id"]) == list(result.batch["tx_id"]) == ["a", "z"]
    assert list(result.features["amount"]) == [20_000.0, 20_002.0]


def test_every_row_failing_leaves_an_empty_result() -> None:
    items = [decoded(0, 0, transaction("a", T0, amount=666.0))]
    result = _step(items, _states(0), scorer=FakeScorer(fail_score=666.0))
    assert result.predictions.empty and len(result.rejected) == 1
    assert list(result.features.columns) in ([], list(FEATURE_NAMES))


def test_records_a_sealed_table_passed_by_days_are_marked_late_and_counted() -> None:
    """A table sealed while a partition was idle counted that partition's day as empty: its
    records from two days or more before the newest sealed table arrive too late to count."""
    times = pd.to_datetime(
        ["2026-03-01 23:59", "2026-03-02 00:00", "2026-03-03 12:00", "2026-03-01 08:00"], utc=True
    )
    predictions = pd.DataFrame({"event_time": times, "late": [False, False, False, True]})
    assert step_module.late_after_seal(predictions.copy(), None) == 0
    marked = predictions.copy()
    assert step_module.late_after_seal(marked, np.datetime64("2026-03-03")) == 1
    assert marked["late"].tolist() == [True, False, False, True]  # already late: not counted
    assert step_module.late_after_seal(predictions.copy(), np.datetime64("2026-03-02")) == 0
