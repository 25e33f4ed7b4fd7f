"""Backtest a rule set on stored history before publishing it: what it would have reviewed and
declined per day (transactions, cards, amount), its precision and recall on matured labels,
its overlap with what the live policy decided, and its load against the analysts' capacity.

The stored rows carry their features and their score, so the rules are applied exactly as an
engine would (``policy.apply_rules``) with the current model's thresholds. Only the columns
the rules read are fetched, with one ``COPY`` read by pyarrow: millions of rows in seconds.
Text fields other than card and terminal (channel, category, currency) are not stored with a
prediction: a rule reading them sees them missing, and the summary says so.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv

from fraudstream.features import FEATURE_NAMES
from fraudstream.policy.decide import apply_rules
from fraudstream.policy.rules import RuleSet

__all__ = ["Backtest", "backtest"]

_FLAGGED = 1  # severity: review or more


@dataclass(frozen=True)
class Backtest:
    days: pd.DataFrame  # per day: the draft's and the live policy's figures
    totals: dict[str, float]
    unread: list[str]  # fields the rules read that stored rows do not keep (always missing)
    rows: int


def _load(
    conn: psycopg.Connection[Any], first: date, last: date, features: list[str]
) -> pd.DataFrame:
    indices = ", ".join(
        f"NULLIF(p.features[{FEATURE_NAMES.index(name) + 1}], 'NaN') AS {name}" for name in features
    )
    query = (
        "COPY (SELECT (p.event_time AT TIME ZONE 'UTC')::date AS day, p.card_id, "  # noqa: S608
        "p.terminal_id, p.amount::float8 AS amount, p.score, p.decision, "
        f"f.tx_id IS NOT NULL AS fraud{', ' + indices if indices else ''} "
        "FROM fraud_predictions p LEFT JOIN (SELECT DISTINCT tx_id FROM labels "
        "WHERE is_fraud) f ON f.tx_id = p.tx_id "
        "WHERE p.event_time >= %s AND p.event_time < %s) TO STDOUT (FORMAT csv, HEADER)"
    )
    buffer = io.BytesIO()
    start = datetime.combine(first, time.min, timezone.utc)
    end = datetime.combine(last + timedelta(days=1), time.min, timezone.utc)
    with conn.cursor() as cursor, cursor.copy(query, (start, end)) as copy:
        for chunk in copy:
            buffer.write(chunk)
    buffer.seek(0)
    if buffer.getbuffer().nbytes == 0:
        return pd.DataFrame()
    types = {"day": pa.date32(), "card_id": pa.string(), "terminal_id": pa.string(),
             "decision": pa.string(), "fraud": pa.bool_(),
             **{name: pa.float64() for name in ("amount", "score", *features)}}  # fmt: skip
    table = pacsv.read_csv(
        buffer,
        convert_options=pacsv.ConvertOptions(
            column_types=types, true_values=["t"], false_values=["f"]
        ),
    )
    return table.to_pandas()


def backtest(
    conn: psycopg.Connection[Any],
    rules: RuleSet,
    *,
    first: date,
    last: date,
    thresholds: Mapping[str, float],
    matured_before: date,
    capacity: int = 100,
) -> Backtest:
    """``rules`` over the predictions stored with event times in [first, last] (UTC days);
    precision and recall only on days before ``matured_before`` (whose labels are in)."""
    names: set[str] = set()
    for rule in rules.active:
        names |= rule.reads
    features = sorted(n for n in names if n in FEATURE_NAMES and n != "amount")  # (a column)
    unread = sorted(names - set(features) - {"amount", "card_id", "terminal_id"})
    frame = _load(conn, first, last, features)
    if frame.empty:
        return Backtest(pd.DataFrame(), {}, unread, 0)
    columns = {name: frame[name].to_numpy(dtype=float) for name in ("amount", *features)}
    texts = {name: frame[name].to_numpy(dtype=object) for name in ("card_id", "terminal_id")}
    outcome = apply_rules(frame["score"].to_numpy(dtype=float), columns, texts, thresholds, rules)
    draft = outcome.severity
    live = frame["decision"].map({"approve": 0, "review": 1, "decline": 2}).to_numpy()
    flagged, live_flagged = draft >= _FLAGGED, live >= _FLAGGED
    fraud = frame["fraud"].to_numpy(dtype=bool)
    parts = pd.DataFrame(
        {
            "day": frame["day"], "transactions": 1, "frauds": fraud,
            "reviewed": draft == 1, "declined": draft == 2, "flagged": flagged,
            "flagged_amount": np.where(flagged, frame["amount"], 0.0),
            "caught": flagged & fraud, "live_flagged": live_flagged,
            "live_caught": live_flagged & fraud, "both_flagged": flagged & live_flagged,
        }
    )  # fmt: skip
    days = parts.groupby("day").sum()
    days["cards"] = frame.loc[flagged].groupby("day")["card_id"].nunique()
    days["cards"] = days["cards"].fillna(0).astype(int)
    matured = days.index < matured_before
    with np.errstate(invalid="ignore", divide="ignore"):
        days["precision"] = np.where(matured, days["caught"] / days["flagged"], np.nan)
        days["recall"] = np.where(matured, days["caught"] / days["frauds"], np.nan)
        days["live_precision"] = np.where(
            matured, days["live_caught"] / days["live_flagged"], np.nan
        )
        days["live_recall"] = np.where(matured, days["live_caught"] / days["frauds"], np.nan)
        days["overlap"] = days["both_flagged"] / days["flagged"]
    days["over_capacity"] = (days["cards"] - capacity).clip(lower=0)
    done = days[matured]
    totals = {
        "transactions": float(days["transactions"].sum()),
        "reviewed": float(days["reviewed"].sum()), "declined": float(days["declined"].sum()),
        "flagged_amount": float(days["flagged_amount"].sum()),
        "precision": _ratio(done["caught"].sum(), done["flagged"].sum()),
        "recall": _ratio(done["caught"].sum(), done["frauds"].sum()),
        "live_precision": _ratio(done["live_caught"].sum(), done["live_flagged"].sum()),
        "live_recall": _ratio(done["live_caught"].sum(), done["frauds"].sum()),
        "overlap": _ratio(days["both_flagged"].sum(), days["flagged"].sum()),
        "days_over_capacity": float((days["over_capacity"] > 0).sum()),
    }  # fmt: skip
    return Backtest(days.reset_index(), totals, unread, len(frame))


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else float("nan")
