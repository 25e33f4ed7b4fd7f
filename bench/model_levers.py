"""The model levers of docs/model.md on the Handbook preset with labels exactly 7 days late:
``python -m bench.model_levers [--history FILE] [LEVER ...]`` prints AUC-ROC / AP / CP@100
(the chapter-5 protocol: selection on validation folds, mean of the test folds) and the
training time.

``--history`` takes any file the dataset adapters read instead of the preset, for instance the
Handbook's own simulated data in its own format (its labels are then taken to be reported
``simulator.label_delay_days`` after each transaction: 7 by default, the book's assumption).

Features are computed once and cached under ``<cache_dir>/levers`` (the preset) or
``<cache_dir>/levers-<file name>``. The terminal variants
(``hourly``, ``per-transaction``) are computed here, offline, from the same transactions: they
are what an intraday terminal table would give, not what the engines compute today.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fraudstream.config import load_settings
from fraudstream.features import FEATURE_NAMES, history_features
from fraudstream.model import train as training
from fraudstream.model.data import training_data_from_file
from fraudstream.simulator.generator import LabelDelay, generate_blocks, preset
from fraudstream.simulator.history import write_history

_GRID = [
    {"n_estimators": 200, "learning_rate": 0.05, "max_depth": d, "min_child_weight": w}
    for d in (3, 6)
    for w in (1, 5)
]
_DAY = 86_400


def _cached(root: Path, history: Path | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame_file, features_file = root / "frame.parquet", root / "features.parquet"
    if not features_file.exists():
        if history is None:
            history = root / "handbook-7d.parquet"
            late = LabelDelay(median_days=7, sigma=0, max_days=7, unreported_fraction=0,
                              maturity_days=7)  # fmt: skip
            params = preset("handbook", labels=late)
            write_history(generate_blocks(params), history, params)
        data = training_data_from_file(load_settings(), history)
        data.frame.to_parquet(frame_file)
        history_features(data.frame, data.frauds).to_parquet(features_file)
    return pd.read_parquet(frame_file), pd.read_parquet(features_file)


def delayed_terminal_risk(frame: pd.DataFrame, period_s: int | None) -> pd.DataFrame:
    """The delayed terminal columns counted from each transaction's time (``period_s`` None)
    or from the start of its period (3600: hourly tables) instead of its day: transactions at
    the terminal in [t − 7 d − w, t − 7 d) and the share of them that were fraud (all known by
    t when labels are exactly 7 days late)."""
    seconds = (frame["event_time"] - frame["event_time"].min()).dt.total_seconds()
    seconds = seconds.to_numpy().astype(np.int64)
    terminal = pd.factorize(frame["terminal_id"])[0].astype(np.int64)
    key = terminal * 10**9 + seconds
    order = np.argsort(key, kind="stable")
    sorted_keys = key[order]
    frauds = np.concatenate([[0], np.cumsum(frame["is_fraud"].to_numpy(np.int64)[order])])
    at = seconds if period_s is None else seconds // period_s * period_s
    columns = {}
    for days in (1, 7, 30):
        low = np.searchsorted(sorted_keys, terminal * 10**9 + at - (7 + days) * _DAY)
        high = np.searchsorted(sorted_keys, terminal * 10**9 + at - 7 * _DAY)
        count = high - low
        columns[f"terminal_tx_count_{days}d_delayed"] = count.astype(float)
        columns[f"terminal_risk_{days}d_delayed"] = np.where(
            count > 0, (frauds[high] - frauds[low]) / np.maximum(count, 1), 0.0
        )
    return pd.DataFrame(columns, index=frame.index)


LEVERS: dict[str, tuple[dict[str, Any], int | str | None]] = {
    # name: (grid changes, terminal variant: "daily" as the engines, else the period)
    "before": ({}, "daily"),
    "exact": ({"tree_method": "exact"}, "daily"),
    "base_score": ({"base_score": 0.5}, "daily"),
    "per-transaction": ({}, None),
    "hourly": ({}, 3600),
    "hourly+exact": ({"tree_method": "exact"}, 3600),
    "hourly+class-weight": ({"scale_pos_weight": 5}, 3600),
    "hourly+subsample": ({"subsample": 0.8, "colsample_bytree": 0.8}, 3600),
    # not a grid change: the share of newcomer rows in training (ADR 16)
    "exact+newcomers": ({"tree_method": "exact", "newcomers": 0.05}, "daily"),
}


def run(names: list[str], history: Path | None = None) -> None:
    unknown = [name for name in names if name not in LEVERS]
    if unknown:
        raise SystemExit(f"unknown lever {', '.join(unknown)}: choose from {', '.join(LEVERS)}")
    suffix = "" if history is None else f"-{history.name}"
    root = load_settings().cache_dir / f"levers{suffix}"
    root.mkdir(parents=True, exist_ok=True)
    frame, features = _cached(root, history)
    for name in names:
        changes, variant = LEVERS[name]
        changes = dict(changes)
        newcomers = float(changes.pop("newcomers", 0.0))
        chosen = features.copy()
        if variant != "daily":
            period = variant if isinstance(variant, int) else None
            terminal = delayed_terminal_risk(frame, period)
            chosen[terminal.columns] = terminal
        started = time.monotonic()
        result = training.train(
            frame, chosen[list(FEATURE_NAMES)], backend_name="xgboost",
            grid=[{**params, **changes} for params in _GRID],
            created_at=datetime.now(timezone.utc), source="levers", newcomers=newcomers,
        )  # fmt: skip
        assert result.test is not None
        test = result.test
        print(
            f"{name}: AUC-ROC {test.auc_roc:.4f}, AP {test.average_precision:.4f}, CP@100 "
            f"{test.card_precision_at_k:.4f}; {time.monotonic() - started:.0f} s; chose "
            f"{result.metadata['params']}",
            flush=True,
        )


def main(argv: list[str]) -> None:
    history = None
    if argv[:1] == ["--history"]:
        if len(argv) < 2:
            raise SystemExit("--history needs a file")
        history, argv = Path(argv[1]), argv[2:]
    run(argv or list(LEVERS), history)


if __name__ == "__main__":
    main(sys.argv[1:])
