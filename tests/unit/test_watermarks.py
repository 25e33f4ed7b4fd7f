"""Partition watermarks, late records and when a terminal table may be sealed."""

from __future__ import annotations

import itertools
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudstream.features.watermarks import (
    NO_WATERMARK,
    PartitionProgress,
    counting_horizon,
    late_rows,
    sealable,
)

HOUR_US = 3_600 * 1_000_000
DAY_US = 24 * HOUR_US
DAY = np.datetime64("2026-03-10", "D")
DAY_START_US = int(DAY.astype("datetime64[us]").astype(np.int64))


def reference(
    rows: list[tuple[int, int]], watermarks: dict[int, int], lateness_us: int
) -> tuple[list[bool], dict[int, int]]:
    """The definition, one record at a time: late when more than the lateness behind the
    newest event time its partition had before it."""
    marks = dict(watermarks)
    flags = []
    for partition, event_us in rows:
        before = marks.get(partition)
        flags.append(before is not None and event_us < before - lateness_us)
        marks[partition] = event_us if before is None else max(before, event_us)
    return flags, marks


def run_batches(
    rows: list[tuple[int, int]], cuts: list[int], watermarks: dict[int, int], lateness_us: int
) -> tuple[list[bool], dict[int, int]]:
    """``late_rows`` over ``rows`` cut into consecutive batches at ``cuts``."""
    marks = dict(watermarks)
    flags: list[bool] = []
    bounds = [0, *sorted(set(cuts)), len(rows)]
    for start, stop in itertools.pairwise(bounds):
        batch = rows[start:stop]
        partitions = np.array([p for p, _ in batch], dtype=np.int64)
        times = np.array([t for _, t in batch], dtype=np.int64)
        flags += late_rows(partitions, times, marks, lateness_us).tolist()
    return flags, marks


# Event times within a few hours, a lateness of up to an hour: both cases are common.
_minutes = st.integers(0, 4 * 60).map(lambda m: m * 60_000_000)
_rows = st.lists(st.tuples(st.integers(0, 2), _minutes), max_size=40)
_lateness = st.sampled_from([0, 60_000_000, 30 * 60_000_000, HOUR_US])
_start = st.dictionaries(st.integers(0, 2), st.integers(0, 4 * HOUR_US), max_size=3)


@settings(max_examples=300, deadline=None)
@given(rows=_rows, lateness_us=_lateness, start=_start, data=st.data())
def test_late_rows_follow_the_definition_whatever_the_batches(
    rows: list[tuple[int, int]], lateness_us: int, start: dict[int, int], data: st.DataObject
) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(rows)), max_size=6))
    expected_flags, expected_marks = reference(rows, start, lateness_us)
    flags, marks = run_batches(rows, cuts, start, lateness_us)
    assert flags == expected_flags
    assert marks == expected_marks


@settings(max_examples=200, deadline=None)
@given(rows=_rows, lateness_us=_lateness, data=st.data())
def test_how_partitions_interleave_changes_nothing(
    rows: list[tuple[int, int]], lateness_us: int, data: st.DataObject
) -> None:
    """The same per-partition sequences, interleaved and cut any other way, give every record
    the same flag and every partition the same final watermark."""
    tagged = [(partition, t, i) for i, (partition, t) in enumerate(rows)]
    keys = data.draw(st.lists(st.integers(0, 5), min_size=len(rows), max_size=len(rows)))
    # A stable sort on random keys per partition queue: each partition keeps its own order.
    queues = {p: [r for r in tagged if r[0] == p] for p in {p for p, _, _ in tagged}}
    shuffled = []
    for index in sorted(range(len(keys)), key=lambda i: keys[i]):
        shuffled.append(queues[rows[index][0]].pop(0))
    cuts = data.draw(st.lists(st.integers(0, len(rows)), max_size=6))

    flags, marks = run_batches([(p, t) for p, t, _ in tagged], [], {}, lateness_us)
    other_flags, other_marks = run_batches([(p, t) for p, t, _ in shuffled], cuts, {}, lateness_us)
    by_record = {i: f for (_, _, i), f in zip(shuffled, other_flags, strict=True)}
    assert [by_record[i] for i in range(len(rows))] == flags
    assert other_marks == marks


def test_late_rows_on_a_small_example() -> None:
    """Two partitions with their own watermarks; the bound is strict; a watermark given
    beforehand counts, and a partition absent from the batch keeps its watermark."""
    minute = 60_000_000
    partitions = np.array([0, 0, 1, 0, 1, 0, 0])
    times = np.array([100, 50, 10, 89, 9, 90, 40]) * minute
    marks = {2: 7 * minute, 1: 20 * minute}
    late = late_rows(partitions, times, marks, 10 * minute)
    # p0: first record never late; 50 < 100-10 late; 89 < 90 late; 90 == 100-10 not late.
    # p1: starts at 20; 10 == 20-10 not late; 9 < 10 late.
    assert late.tolist() == [False, True, False, True, True, False, True]
    assert marks == {0: 100 * minute, 1: 20 * minute, 2: 7 * minute}


def test_no_watermark_means_nothing_is_late_yet() -> None:
    marks: dict[int, int] = {0: int(NO_WATERMARK)}
    late = late_rows(np.array([0]), np.array([0]), marks, 0)
    assert not late.any() and marks == {0: 0}
    assert late_rows(np.array([], np.int64), np.array([], np.int64), marks, 0).tolist() == []
    assert marks == {0: 0}


def test_counting_horizon_is_the_start_of_the_day_before_plus_the_lateness() -> None:
    lateness = timedelta(minutes=90)
    expected = DAY_START_US - DAY_US + 90 * 60_000_000
    assert counting_horizon(DAY, lateness) == expected
    # Any time of the day, any unit, names the same day.
    assert counting_horizon(np.datetime64("2026-03-10T23:59:59.999999"), lateness) == expected
    assert counting_horizon(np.datetime64("2026-03-10T00:00", "s"), lateness) == expected
    assert counting_horizon(DAY, timedelta(0)) == DAY_START_US - DAY_US


@pytest.mark.parametrize("lateness", [timedelta(0), timedelta(seconds=1), timedelta(hours=2)])
def test_past_the_horizon_every_record_the_table_counts_is_late(lateness: timedelta) -> None:
    """The horizon and the late flag agree: once a partition's watermark reaches the horizon,
    a record of day D−2 (the last day the table of D counts) can only arrive late; one step
    before it, the last microsecond of D−2 is still on time."""
    lateness_us = int(lateness.total_seconds() * 1_000_000)
    horizon = counting_horizon(DAY, lateness)
    last_counted = DAY_START_US - DAY_US - 1  # 23:59:59.999999 on D−2
    first_uncounted = DAY_START_US - DAY_US  # D−1 00:00: not in the table
    for watermark, expected in [(horizon, [True, False]), (horizon - 1, [False, False])]:
        marks = {0: watermark}
        times = np.array([last_counted, first_uncounted])
        late = late_rows(np.array([0, 0]), times, marks, lateness_us)
        assert late.tolist() == expected


def _progress(next_offset: int, watermark: int, end_offset: int) -> PartitionProgress:
    return PartitionProgress(next_offset=next_offset, watermark=watermark, end_offset=end_offset)


def test_sealable() -> None:
    lateness = timedelta(hours=1)
    horizon = counting_horizon(DAY, lateness)
    past = _progress(10, horizon, 50)  # exactly at the horizon counts as past it
    beyond = _progress(10, horizon + DAY_US, 10)
    idle = _progress(7, horizon - 1, 7)  # nothing more to read
    empty = _progress(0, int(NO_WATERMARK), 0)  # a partition that never had a record
    behind = _progress(3, horizon - 1, 4)  # one record still to read
    unread = _progress(0, int(NO_WATERMARK), 5)

    assert sealable(DAY, {}, lateness) == (True, [])
    assert sealable(DAY, {0: past, 1: beyond}, lateness) == (True, [])
    assert sealable(DAY, {4: idle, 0: past, 2: empty}, lateness) == (True, [2, 4])
    assert sealable(DAY, {0: past, 1: behind, 2: idle}, lateness) == (False, [])
    assert sealable(DAY, {0: past, 1: unread}, lateness) == (False, [])
    # The same watermark is past the horizon of an earlier day, short of a later one's.
    assert sealable(DAY - 1, {1: behind}, lateness) == (True, [])
    assert sealable(DAY + 1, {0: past}, lateness) == (False, [])
    # A larger lateness moves the horizon on: the same watermark is no longer enough.
    assert sealable(DAY, {0: past}, lateness + timedelta(microseconds=1)) == (False, [])
