"""Why a transaction scored high: its top contributing features, signed, in words."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fraudstream.features import describe

__all__ = ["Reason", "top_reasons"]


@dataclass(frozen=True)
class Reason:
    feature: str
    value: float
    contribution: float  # log-odds; positive pushes towards fraud
    text: str

    def as_dict(self) -> dict[str, object]:
        value = None if np.isnan(self.value) else round(self.value, 6)
        return {
            "feature": self.feature,
            "value": value,
            "contribution": round(self.contribution, 4),
            "text": self.text,
        }


def top_reasons(
    contributions: np.ndarray, values: np.ndarray, names: list[str], top: int = 3
) -> list[list[Reason]]:
    """Per row, the ``top`` features with the largest absolute contribution (ties: by name
    order, so the result is deterministic). ``contributions`` may carry a bias column last."""
    contributions = contributions[:, : len(names)]
    order = np.argsort(-np.abs(contributions), axis=1, kind="stable")[:, :top]
    reasons = []
    for row, columns in enumerate(order):
        reasons.append(
            [
                Reason(
                    feature=names[c],
                    value=float(values[row, c]),
                    contribution=float(contributions[row, c]),
                    text=describe(names[c], float(values[row, c])),
                )
                for c in columns
            ]
        )
    return reasons
