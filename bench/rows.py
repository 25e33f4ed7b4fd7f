"""What engines store with each prediction besides its score and decision, for the benchmarks
that fill a predictions table without an engine (the table's width is the engines')."""

from __future__ import annotations

import numpy as np

from fraudstream.features import FEATURE_NAMES
from fraudstream.policy import default_rules

__all__ = ["engine_columns"]

_VECTORS = 1_000  # distinct feature vectors: their values do not matter here, their size does


def engine_columns(rng: np.random.Generator, n: int, *, text: bool = False) -> dict[str, object]:
    """``n`` rows of the content digest, feature vector (``FEATURE_NAMES`` order), rules
    version and late flag; with ``text``, the vectors as PostgreSQL array literals (for a
    text or CSV ``COPY``), else as lists of floats (for ``PredictionSink.write``)."""
    vectors = np.round(rng.gamma(2.0, 30.0, (_VECTORS, len(FEATURE_NAMES))), 3).tolist()
    pool = ["{" + ",".join(map(str, v)) + "}" for v in vectors] if text else vectors
    bounds = np.iinfo(np.int64)
    return {
        "content_hash": rng.integers(bounds.min, bounds.max, n, dtype=np.int64),
        "features": [pool[i] for i in rng.integers(0, _VECTORS, n)],
        "rules_version": default_rules().version,
        "late": np.zeros(n, dtype=bool),
    }
