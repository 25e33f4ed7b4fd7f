"""New cards and new terminals (docs/model.md, ADR 16): ``python -m bench.newcomers [SHARE ...]``
trains the first model's setup (the history ``up`` simulates, its parameters) with each share
of newcomer rows (default 0, 0.02, 0.05 and 0.1) and prints, on its latest test week, the
share of transactions flagged at its review threshold as they are, as their card's first
transaction, also at a terminal with no past, and at a terminal with no past only; then the
share flagged on the first days of the history, where every card and terminal is new, with
the features the code computes there. The history and its features are cached under
``<cache_dir>/newcomers``.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from fraudstream.config import load_settings
from fraudstream.features import FEATURE_NAMES, history_features
from fraudstream.model.backends import backend
from fraudstream.model.bootstrap import first_model_history, first_model_protocol
from fraudstream.model.data import frauds_for_features
from fraudstream.model.protocol import split
from fraudstream.model.train import FIRST_MODEL_PARAMS, as_first_of_card, train

_DAYS = (1, 2, 3, 8)


def _history() -> tuple[pd.DataFrame, pd.DataFrame]:
    settings = load_settings()
    root = settings.cache_dir / "newcomers"
    root.mkdir(parents=True, exist_ok=True)
    frame_file, features_file = root / "frame.parquet", root / "features.parquet"
    if not features_file.exists():
        frame, labels = first_model_history(settings, root / "history.parquet")
        history_features(frame, frauds_for_features(frame, labels)).to_parquet(features_file)
        frame.to_parquet(frame_file)
    return pd.read_parquet(frame_file), pd.read_parquet(features_file)


def run(shares: list[float]) -> None:
    frame, features = _history()
    protocol = first_model_protocol(frame)
    matrix = features[list(FEATURE_NAMES)].to_numpy(dtype=float)
    _train, test = split(frame, protocol.test_folds()[0])
    week = matrix[test]
    first_card = as_first_of_card(week)
    terminals = [FEATURE_NAMES.index(n) for n in FEATURE_NAMES if n.startswith("terminal_")]
    at_new_terminal, first_at_new = week.copy(), first_card.copy()
    at_new_terminal[:, terminals] = 0.0
    first_at_new[:, terminals] = 0.0
    start = frame["event_time"].min().normalize()
    days = {
        day: matrix[
            (
                (frame["event_time"] >= start + pd.Timedelta(days=day - 1))
                & (frame["event_time"] < start + pd.Timedelta(days=day))
            ).to_numpy()
        ]
        for day in _DAYS
    }
    engine = backend("xgboost")
    for share in shares:
        result = train(
            frame, features, backend_name="xgboost", protocol=protocol,
            grid=[FIRST_MODEL_PARAMS["xgboost"]], created_at=datetime.now(timezone.utc),
            source="bench.newcomers", newcomers=share,
        )  # fmt: skip
        assert result.test is not None
        review = result.metadata["thresholds"]["review"]

        def flagged(rows: np.ndarray, model: object = result.model, review: float = review) -> str:
            return f"{(engine.predict(model, rows) >= review).mean():.2%}"

        scores = result.test
        print(
            f"newcomers {share:.0%}: test week {flagged(week)}, as the card's first "
            f"{flagged(first_card)}, also at a new terminal {flagged(first_at_new)}, at a new "
            f"terminal only {flagged(at_new_terminal)}; history "
            + ", ".join(f"day {day} {flagged(rows)}" for day, rows in days.items())
            + f"; AUC-ROC {scores.auc_roc:.4f}, AP {scores.average_precision:.4f}, CP@100 "
            f"{scores.card_precision_at_k:.4f}",
            flush=True,
        )


def main(argv: list[str]) -> None:
    try:
        shares = [float(value) for value in argv] or [0.0, 0.02, 0.05, 0.1]
    except ValueError:
        raise SystemExit(f"shares are numbers between 0 and 0.5, not {' '.join(argv)}") from None
    if not all(0 <= share <= 0.5 for share in shares):
        raise SystemExit(f"shares are between 0 and 0.5, not {' '.join(argv)}")
    run(shares)


if __name__ == "__main__":
    main(sys.argv[1:])
