"""Champion or challenger: whether a challenger scored in shadow has earned promotion, and
whether the champion has fallen below its floor (docs/adr/0008).

Both models scored the same transactions (the challenger in shadow), so each matured day
gives a pair of figures: card precision at the analysts' capacity (CP@k, k cards a day) and
the share of fraud money on those k cards. The challenger is promoted when, over at least
``min_days`` days, it is better on CP@k with a one-sided paired bootstrap over days below
``alpha``, and not worse on money. Pure: the caller reads the rows and acts on the verdict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from fraudstream.model.metrics import card_precision_at_k, money_recall_at_k

__all__ = ["Comparison", "compare", "daily_pairs"]

Verdict = Literal["promote", "keep", "wait"]


@dataclass(frozen=True)
class Comparison:
    verdict: Verdict
    why: str
    days: int
    champion_cp: float
    challenger_cp: float
    champion_money: float
    challenger_money: float
    p_value: float

    def as_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and np.isnan(v) else v)
            for k, v in asdict(self).items()
        }


def daily_pairs(rows: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per day, both models' CP@k and money recall on the same transactions. ``rows``: day,
    card_id, amount, is_fraud, champion (score), challenger (score)."""
    out = []
    for day, part in rows.groupby("day", sort=True):
        figures: dict[str, Any] = {"day": day}
        for model in ("champion", "challenger"):
            scored = part.assign(score=part[model])
            figures[f"{model}_cp"] = card_precision_at_k(scored, k, remove_detected=False)
            figures[f"{model}_money"] = money_recall_at_k(scored, k)
        out.append(figures)
    columns = ["day", "champion_cp", "champion_money", "challenger_cp", "challenger_money"]
    return pd.DataFrame(out, columns=columns)  # the columns even without a day (no shadow)


def compare(
    pairs: pd.DataFrame,
    *,
    min_days: int = 7,
    alpha: float = 0.05,
    resamples: int = 2_000,
    seed: int = 0,
) -> Comparison:
    """The verdict on ``daily_pairs`` output: promote, keep the champion, or wait for more
    matured days. Days without fraud count for CP@k (both models score zero) but not for
    money."""
    n = len(pairs)
    cp = pairs[["champion_cp", "challenger_cp"]].to_numpy(dtype=float)
    money = pairs[["champion_money", "challenger_money"]].to_numpy(dtype=float)
    means = np.nanmean(cp, axis=0) if n else np.array([np.nan, np.nan])
    money_means = (
        np.nanmean(money, axis=0) if n and not np.isnan(money).all() else np.array([np.nan] * 2)
    )
    p_value = _paired_bootstrap(cp[:, 1] - cp[:, 0], resamples, seed) if n else float("nan")

    def verdict(kind: Verdict, why: str) -> Comparison:
        return Comparison(
            kind, why, n, float(means[0]), float(means[1]), float(money_means[0]),
            float(money_means[1]), p_value,
        )  # fmt: skip

    if n < min_days:
        return verdict("wait", f"{n} matured day(s) of shadow scores, {min_days} needed")
    if not means[1] > means[0]:
        return verdict("keep", f"CP@k {means[1]:.3f} is not above the champion's {means[0]:.3f}")
    if not p_value < alpha:
        return verdict(
            "keep", f"CP@k better ({means[1]:.3f} vs {means[0]:.3f}) but not significantly "
            f"(p = {p_value:.3f} ≥ {alpha})",
        )  # fmt: skip
    if money_means[1] < money_means[0]:
        return verdict("keep", f"money recall lower ({money_means[1]:.3f} vs {money_means[0]:.3f})")
    return verdict(
        "promote", f"CP@k {means[1]:.3f} vs {means[0]:.3f} (p = {p_value:.3f}), money recall "
        f"{money_means[1]:.3f} vs {money_means[0]:.3f}, over {n} days",
    )  # fmt: skip


def _paired_bootstrap(differences: np.ndarray, resamples: int, seed: int) -> float:
    """One-sided p-value that the mean daily difference is not above zero: the share of
    bootstrap resamples of the days whose mean difference is ≤ 0."""
    values = differences[~np.isnan(differences)]
    if len(values) == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(values), size=(resamples, len(values)))
    means = values[draws].mean(axis=1)
    return float((np.count_nonzero(means <= 0) + 1) / (resamples + 1))
