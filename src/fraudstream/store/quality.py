"""Model quality per matured day, computed once and kept, so that the dashboard's Model
quality page reads a few rows instead of joining millions of predictions to their labels.

A day is measured when it is ``maturity_days`` older than the stream's newest day (labels
arriving later do not change it: that is what maturity means). Per model version and role
(the champion that decided, or a challenger scored in shadow on the same traffic): volume,
frauds, AUC-ROC, AP, CP@k, how many were flagged (review or decline) and how many of those
were frauds, the share of fraud money on each day's k top cards, and the scores of frauds
and of legitimate transactions in 100 bins.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql

from fraudstream.model.metrics import (
    auc_roc,
    average_precision,
    card_precision_at_k,
    money_recall_at_k,
    wilson_interval,
)
from fraudstream.policy.decide import EXPLORE

__all__ = [
    "HISTOGRAM_BINS",
    "DeclinePrecision",
    "decline_precision",
    "labelled_scores",
    "refresh_quality",
]

log = logging.getLogger("fraudstream.quality")

HISTOGRAM_BINS = 100
_LOCK = 0x71756C74  # "qult": one engine measures at a time


def labelled_scores(
    conn: psycopg.Connection[Any], since: datetime, until: datetime, *, role: str = "champion"
) -> pd.DataFrame:
    """Scored transactions of ``[since, until)`` with their outcome: fraud when any label
    says so, else legitimate (as the Handbook counts unlabelled transactions). ``role``
    "shadow": the challengers' scores of the same transactions instead of the champion's."""
    scores = (
        "SELECT p.tx_id, p.event_time, p.card_id, p.amount, s.score, s.decision, "
        "       s.model_version "
        "FROM shadow_predictions s JOIN fraud_predictions p USING (tx_id) "
        "WHERE s.event_time >= %(since)s AND s.event_time < %(until)s"
        if role == "shadow"
        else "SELECT tx_id, event_time, card_id, amount, score, decision, model_version "
        "FROM fraud_predictions WHERE event_time >= %(since)s AND event_time < %(until)s"
    )
    with conn.cursor() as cursor:
        cursor.execute(
            sql.SQL(
                "SELECT (p.event_time AT TIME ZONE 'UTC')::date AS day, p.card_id, "
                "       p.amount::float8 AS amount, p.score, p.decision, p.model_version, "
                "       coalesce(l.is_fraud, false) AS is_fraud "
                "FROM ({}) p "
                "LEFT JOIN LATERAL (SELECT bool_or(is_fraud) AS is_fraud FROM labels "
                "                   WHERE labels.tx_id = p.tx_id) l ON true"
            ).format(sql.SQL(scores)),
            {"since": since, "until": until},
        )
        columns = [column.name for column in cursor.description or []]
        return pd.DataFrame(cursor.fetchall(), columns=columns)


def refresh_quality(
    conn: psycopg.Connection[Any],
    newest_day: date,
    *,
    maturity_days: int,
    lookback_days: int = 60,
    k: int = 100,
) -> list[date]:
    """Measure every matured day of the last ``lookback_days`` not measured yet; returns them.
    Commits; another process measuring at the same moment makes this one skip."""
    last = newest_day - timedelta(days=maturity_days)  # exclusive
    first = newest_day - timedelta(days=lookback_days)
    locked = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (_LOCK,)).fetchone()
    if not (locked and locked[0]):
        conn.rollback()
        return []
    done = {
        row[0]
        for row in conn.execute(
            "SELECT DISTINCT day FROM quality_daily WHERE day >= %s AND day < %s", (first, last)
        )
    }
    measured = []
    day = first
    while day < last:
        if day not in done:
            start = datetime.combine(day, time(), tzinfo=timezone.utc)
            for role in ("champion", "shadow"):
                frame = labelled_scores(conn, start, start + timedelta(days=1), role=role)
                if len(frame):
                    _store_day(conn, day, frame, k, role)
                    if day not in measured:
                        measured.append(day)
        day += timedelta(days=1)
    conn.commit()
    if measured:
        log.info("model quality measured for %s", ", ".join(map(str, measured)))
    return measured


def _store_day(
    conn: psycopg.Connection[Any], day: date, frame: pd.DataFrame, k: int, role: str
) -> None:
    for version, part in frame.groupby("model_version"):
        labels = part["is_fraud"].to_numpy(bool)
        scores = part["score"].to_numpy(float)
        flagged = (part["decision"] != "approve").to_numpy()
        conn.execute(
            "INSERT INTO quality_daily (day, model_version, role, transactions, frauds, "
            "auc_roc, average_precision, card_precision_at_k, k, flagged, flagged_frauds, "
            "money_recall) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (day, model_version, role) DO NOTHING",
            (
                day, version, role, len(part), int(labels.sum()),
                _finite(auc_roc(labels, scores)), _finite(average_precision(labels, scores)),
                _finite(card_precision_at_k(part, k, remove_detected=False)), k,
                int(flagged.sum()), int((flagged & labels).sum()),
                _finite(money_recall_at_k(part, k)),
            ),
        )  # fmt: skip
        bins = np.minimum((scores * HISTOGRAM_BINS).astype(int), HISTOGRAM_BINS - 1)
        legitimate = np.bincount(bins[~labels], minlength=HISTOGRAM_BINS)
        fraud = np.bincount(bins[labels], minlength=HISTOGRAM_BINS)
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO quality_histogram (day, model_version, role, bin, legitimate, "
                "fraud) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [
                    (day, version, role, b, int(legitimate[b]), int(fraud[b]))
                    for b in range(HISTOGRAM_BINS)
                ],
            )


def _finite(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


@dataclass(frozen=True)
class DeclinePrecision:
    """How many of the model's would-be declines were fraud, measured on the explored ones
    (sent to review instead, at random: ``policy.explore_share``), with a 95 % interval."""

    explored: int
    frauds: int
    low: float
    high: float

    @property
    def estimate(self) -> float:
        return self.frauds / self.explored if self.explored else float("nan")


def decline_precision(
    conn: psycopg.Connection[Any], since: datetime, until: datetime
) -> DeclinePrecision:
    """Decline precision from the explored transactions of ``[since, until)`` (use matured
    days: a fraud not reported yet counts as legitimate)."""
    row = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE l.is_fraud) FROM fraud_predictions p "
        "LEFT JOIN LATERAL (SELECT bool_or(is_fraud) AS is_fraud FROM labels "
        "                   WHERE labels.tx_id = p.tx_id) l ON true "
        "WHERE %s = ANY(p.rule_hits) AND p.event_time >= %s AND p.event_time < %s",
        (EXPLORE, since, until),
    ).fetchone()
    explored, frauds = (int(row[0]), int(row[1])) if row else (0, 0)
    return DeclinePrecision(explored, frauds, *wilson_interval(frauds, explored))
