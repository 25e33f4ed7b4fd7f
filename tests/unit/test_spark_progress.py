"""The Spark driver's metrics from a micro-batch's progress (Spark's StreamingQueryProgress,
as PySpark gives it: a dict parsed from its JSON)."""

from __future__ import annotations

import json

from fraudstream.engines.spark import partition_lag

TOPIC = "transactions"


def _progress(latest: object, end: object, topic: str = TOPIC) -> dict[str, object]:
    return {
        "batchId": 7,
        "sources": [
            {
                "description": f"KafkaV2[Subscribe[{topic}]]",
                "startOffset": {topic: {"0": 10, "1": 10}},
                "endOffset": end,
                "latestOffset": latest,
                "metrics": {"avgOffsetsBehindLatest": "25.0"},
            }
        ],
    }


def test_lag_is_per_partition_latest_minus_read_to() -> None:
    progress = _progress({TOPIC: {"0": 100, "1": 80, "2": 5}}, {TOPIC: {"0": 60, "1": 80, "2": 5}})
    assert partition_lag(progress, TOPIC) == {0: 40, 1: 0, 2: 0}


def test_offsets_given_as_json_text_are_read_too() -> None:
    progress = _progress(
        json.dumps({TOPIC: {"0": 12, "1": 3}}), json.dumps({TOPIC: {"0": 2, "1": 3}})
    )
    assert partition_lag(progress, TOPIC) == {0: 10, 1: 0}


def test_no_lag_when_the_progress_does_not_say() -> None:
    assert partition_lag({"batchId": 0, "sources": []}, TOPIC) is None
    assert partition_lag(_progress(None, {TOPIC: {"0": 1}}), TOPIC) is None
    assert partition_lag(_progress("not json", "{}"), TOPIC) is None
    other = _progress({"other": {"0": 9}}, {"other": {"0": 1}}, topic="other")
    assert partition_lag(other, TOPIC) is None
