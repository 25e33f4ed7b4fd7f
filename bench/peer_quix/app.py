"""The same job written the way a quix-streams user would write it: a peer for the engine's
benchmark, never part of fraudstream (it runs in its own virtual environment, made by the
benchmark from ``requirements.txt``: quix-streams pins an older confluent-kafka).

Per message: JSON in, the card's history from quix's RocksDB state (``State``), the card
features computed over it in plain Python (the engine's windows and names), calendar
features, one prediction with the engine's own XGBoost model (``inplace_predict`` on one
row), a decision by the model's thresholds; rows out through quix's PostgreSQL sink
(batched per checkpoint, ``ON CONFLICT DO NOTHING`` on ``tx_id``: at-least-once made
idempotent). It does less than the engine: no terminal features (left missing, as the model
allows), no rules or explanations, no dead letters, no exactly-once offsets, no rollups.

Configuration (environment): PEER_BROKER, PEER_TOPIC, PEER_GROUP, PEER_STATE_DIR,
PEER_MODEL_DIR (a registry version directory), PEER_PG (host:port:dbname:user:password),
PEER_COUNT (stop after this many outputs).
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb
from quixstreams import Application, State
from quixstreams.sinks.community.postgresql import PostgreSQLSink

HOUR, DAY = 3_600.0, 86_400.0
CARD_WINDOWS = {"1h": HOUR, "1d": DAY, "7d": 7 * DAY, "30d": 30 * DAY}
DISTINCT_WINDOWS = {"1d": DAY, "7d": 7 * DAY}
HISTORY_CAP = 512
TABLE = "peer_predictions"


def load_model(directory: Path) -> tuple[xgb.Booster, list[str], dict[str, float]]:
    metadata = json.loads((directory / "metadata.json").read_text())
    booster = xgb.Booster()
    booster.load_model(str(directory / "model.xgb.json"))
    booster.set_param({"nthread": 1})
    return booster, list(metadata["features"]), dict(metadata["thresholds"])


def card_features(tx: dict[str, Any], state: State) -> dict[str, float]:
    """The card's features from its history in state, then the transaction appended."""
    t = datetime.fromisoformat(tx["event_time"]).timestamp()
    amount = float(tx["amount"])
    x, y = tx.get("terminal_x"), tx.get("terminal_y")
    history: list[list[Any]] = state.get("history", [])
    if history and history[-1][0] > t:  # a late event counts at the card's latest time
        t = history[-1][0]
    history = [h for h in history if h[0] > t - CARD_WINDOWS["30d"]][-(HISTORY_CAP - 1) :]
    features: dict[str, float] = {}
    for name, width in CARD_WINDOWS.items():
        amounts = [h[1] for h in history if h[0] > t - width] + [amount]
        features[f"card_tx_count_{name}"] = float(len(amounts))
        features[f"card_amount_mean_{name}"] = sum(amounts) / len(amounts)
    before = [h[1] for h in history]
    mean_before = sum(before) / len(before) if before else 0.0
    features["card_amount_ratio_30d"] = amount / mean_before if mean_before > 0 else math.nan
    if history:
        previous = history[-1]
        seconds = t - previous[0]
        distance = _distance(x, y, previous[3], previous[4])
        features["card_seconds_since_prev"] = seconds
        features["card_terminal_distance"] = distance
        features["card_terminal_speed"] = distance / max(seconds, 1.0) * 3600
    else:
        features.update(
            card_seconds_since_prev=math.nan,
            card_terminal_distance=math.nan,
            card_terminal_speed=math.nan,
        )
    for name, width in DISTINCT_WINDOWS.items():
        seen = {h[2] for h in history if h[0] > t - width} | {tx["terminal_id"]}
        features[f"card_distinct_terminals_{name}"] = float(len(seen))
    cx, cy = tx.get("customer_x"), tx.get("customer_y")
    features["card_distance_from_home"] = _distance(x, y, cx, cy)
    history.append([t, amount, tx["terminal_id"], x, y])
    state.set("history", history)
    return features


def _distance(x1: Any, y1: Any, x2: Any, y2: Any) -> float:
    """Planar distance between two points; NaN when a coordinate is missing."""
    if x1 is None or y1 is None or x2 is None or y2 is None:
        return math.nan
    return math.hypot(float(x1) - float(x2), float(y1) - float(y2))


def main() -> None:
    booster, names, thresholds = load_model(Path(os.environ["PEER_MODEL_DIR"]))
    host, port, dbname, user, password = os.environ["PEER_PG"].split(":", 4)
    app = Application(
        broker_address=os.environ["PEER_BROKER"],
        consumer_group=os.environ["PEER_GROUP"],
        auto_offset_reset="earliest",
        state_dir=os.environ["PEER_STATE_DIR"],
        commit_interval=1.0,
        loglevel="WARNING",
    )
    topic = app.topic(os.environ["PEER_TOPIC"], value_deserializer="json")
    sdf = app.dataframe(topic)

    def score(tx: dict[str, Any], state: State) -> dict[str, Any]:
        features = card_features(tx, state)
        when = datetime.fromisoformat(tx["event_time"])
        features.update(
            amount=float(tx["amount"]),
            hour=float(when.hour),
            is_night=float(when.hour < 6),
            is_weekend=float(when.weekday() >= 5),
        )
        row = np.array([[features.get(name, math.nan) for name in names]])
        value = float(booster.inplace_predict(row)[0])
        decision = (
            "decline"
            if value >= thresholds["decline"]
            else "review"
            if value >= thresholds["review"]
            else "approve"
        )
        return {
            "tx_id": tx["tx_id"],
            "card_id": tx["card_id"],
            "terminal_id": tx["terminal_id"],
            "amount": float(tx["amount"]),
            "event_time": tx["event_time"],
            "score": value,
            "decision": decision,
        }

    sdf = sdf.apply(score, stateful=True)
    sdf.sink(
        PostgreSQLSink(
            host=host, port=int(port), dbname=dbname, user=user, password=password,
            table_name=TABLE, primary_key_columns="tx_id", on_conflict_do_nothing=True,
            include_metadata=False,
        )
    )  # fmt: skip
    app.run(count=int(os.environ["PEER_COUNT"]), timeout=60.0)


if __name__ == "__main__":
    main()
