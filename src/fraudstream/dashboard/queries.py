"""What the dashboard's monitoring pages read from PostgreSQL (cases, users and the audit have
their own modules in ``fraudstream.store``).

Every query is fixed SQL text with bound parameters; search input never becomes SQL. Charts
read the per-minute rollups and the engines' status rows; lists of predictions go through an
index (alerts by stored time, a card's or terminal's history) and
a limit, so no page scans the predictions table. What only the predictions know — processing
latency, a card found by a fragment of its token — is read from a short recent stretch of
them, bounded by ``stored_at`` (its BRIN index).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd
import psycopg

from fraudstream.model.profile import FeatureProfile
from fraudstream.store.projections import LATENCY_BUCKETS_MS, SCORE_BINS

__all__ = [
    "LiveSummary",
    "Processing",
    "card_fragment",
    "card_history",
    "dlq_counts",
    "drift_model",
    "engines",
    "feature_histograms",
    "latest_alerts",
    "latest_rejected",
    "live_summary",
    "minute_series",
    "model_events",
    "model_profile",
    "percentile_ms",
    "processing",
    "quality_days",
    "quality_histogram",
    "score_histogram",
    "search",
    "stored_span",
    "terminal_risk",
]

Connection = psycopg.Connection[Any]

_PREDICTION = (
    "tx_id, event_time, card_id, terminal_id, amount::float8 AS amount, score, decision, "
    "rule_hits, reasons, model_version, stored_at"
)
# Built once from the constant above; values only ever arrive as bound parameters.
_ALERTS = f"""
SELECT {_PREDICTION} FROM fraud_predictions WHERE decision <> 'approve'
ORDER BY stored_at DESC LIMIT %s
"""  # noqa: S608
_CARD = f"""
SELECT {_PREDICTION} FROM fraud_predictions WHERE card_id = %s
ORDER BY event_time DESC LIMIT %s
"""  # noqa: S608


def _with_outcomes(found: str) -> str:
    """The predictions of ``found`` (SQL written in this module) with what is known of them
    since: their labels (``fraud (chargeback)``, one per source) and the analyst's verdict,
    both through their tx_id indexes."""
    return f"""
WITH found AS ({found})
SELECT f.*, l.label, r.verdict FROM found f
LEFT JOIN LATERAL (
    SELECT string_agg(CASE WHEN is_fraud THEN 'fraud' ELSE 'legitimate' END
                      || ' (' || source || ')', ', ' ORDER BY source) AS label
    FROM labels WHERE labels.tx_id = f.tx_id
) l ON true
LEFT JOIN LATERAL (
    SELECT verdict || ' (' || analyst || ')' AS verdict
    FROM review_decisions WHERE review_decisions.tx_id = f.tx_id
) r ON true
ORDER BY f.event_time DESC
"""  # noqa: S608


_SEARCH = _with_outcomes(
    f"""
(SELECT {_PREDICTION} FROM fraud_predictions WHERE tx_id = %(q)s)
UNION ALL
(SELECT {_PREDICTION} FROM fraud_predictions WHERE card_id = %(q)s
 ORDER BY event_time DESC LIMIT %(limit)s)
UNION ALL
(SELECT {_PREDICTION} FROM fraud_predictions WHERE terminal_id = %(q)s
 ORDER BY event_time DESC LIMIT %(limit)s)
"""  # noqa: S608
)
# No index serves the end of a token, nor its start unless the database collates as C: the
# cards are looked for among the predictions stored since a bound, then each one's history
# through the card index.
_FRAGMENT = _with_outcomes(
    f"""
WITH cards AS (
    SELECT card_id FROM fraud_predictions
    WHERE stored_at > %(since)s AND (card_id LIKE %(starts)s OR card_id LIKE %(ends)s)
    GROUP BY card_id ORDER BY max(stored_at) DESC LIMIT %(cards)s
)
SELECT p.* FROM cards c CROSS JOIN LATERAL (
    SELECT {_PREDICTION} FROM fraud_predictions WHERE card_id = c.card_id
    ORDER BY event_time DESC LIMIT %(limit)s
) p
"""  # noqa: S608
)


def _frame(conn: Connection, query: str, params: tuple[Any, ...] | dict[str, Any]) -> pd.DataFrame:
    with conn.cursor() as cursor:
        cursor.execute(query, params)
        columns = [column.name for column in cursor.description or []]
        return pd.DataFrame(cursor.fetchall(), columns=columns)


def percentile_ms(histogram: list[int] | np.ndarray, q: float) -> float | None:
    """The q-quantile of a latency histogram (``sink.LATENCY_BUCKETS_MS``), interpolated
    linearly inside its bucket; None when it is empty."""
    counts = np.asarray(histogram, dtype=float)
    total = counts.sum()
    if total <= 0:
        return None
    cumulative = np.cumsum(counts)
    bucket = int(np.searchsorted(cumulative, q * total, side="left"))
    edges = [0.0, *map(float, LATENCY_BUCKETS_MS)]
    low = edges[min(bucket, len(edges) - 1)]
    high = edges[bucket + 1] if bucket + 1 < len(edges) else low  # the open last bucket
    before = cumulative[bucket - 1] if bucket > 0 else 0.0
    inside = (q * total - before) / counts[bucket] if counts[bucket] else 0.0
    return low + (high - low) * inside


@dataclass(frozen=True)
class LiveSummary:
    """The Live page's headline figures over the last few minutes."""

    window: timedelta
    transactions: int
    tx_per_s: float
    alerts_per_min: float
    amount_review: float
    amount_decline: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None


def live_summary(conn: Connection, now: datetime, window: timedelta) -> LiveSummary:
    row = conn.execute(
        "SELECT coalesce(sum(tx_count), 0), coalesce(sum(review_count + decline_count), 0), "
        "       coalesce(sum(amount_review), 0)::float8, coalesce(sum(amount_decline), 0)::float8, "
        "       (SELECT coalesce(array_agg(total ORDER BY bucket), '{}') FROM ("
        "          SELECT bucket, sum(count) AS total FROM rollup_minute r2, "
        "                 unnest(r2.latency_ms_hist) WITH ORDINALITY AS h(count, bucket) "
        "          WHERE r2.minute > %(since)s GROUP BY bucket) per_bucket) "
        "FROM rollup_minute WHERE minute > %(since)s",
        {"since": now - window},
    ).fetchone()
    assert row is not None
    transactions, alerts, review, decline, histogram = row
    seconds = window.total_seconds()
    return LiveSummary(
        window=window,
        transactions=int(transactions),
        tx_per_s=int(transactions) / seconds,
        alerts_per_min=int(alerts) / (seconds / 60),
        amount_review=float(review),
        amount_decline=float(decline),
        latency_p50_ms=percentile_ms(histogram, 0.50),
        latency_p99_ms=percentile_ms(histogram, 0.99),
    )


@dataclass(frozen=True)
class Processing:
    """The predictions stored in the last ``window``: how long they took from the broker's
    append to PostgreSQL (``start`` "append"; "scored" when no row has a broker time: from
    scoring, the engine's part only), and how far the newest of their events lies behind
    the newest of them stored (a stream catching up on history is far behind)."""

    window: timedelta
    rows: int
    start: Literal["append", "scored"]
    p50_ms: float | None
    p99_ms: float | None
    behind_s: float | None
    newest_event: datetime | None


def processing(conn: Connection, now: datetime, window: timedelta) -> Processing:
    """``Processing`` of the predictions stored in the last ``window`` (the BRIN index on
    stored_at bounds the read to them)."""
    row = conn.execute(
        "SELECT count(*), "
        "  percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY "
        "    greatest(extract(epoch FROM stored_at - kafka_time), 0)::float8 * 1000) "
        "    FILTER (WHERE kafka_time IS NOT NULL), "
        "  percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY "
        "    greatest(extract(epoch FROM stored_at - scored_at), 0)::float8 * 1000), "
        "  extract(epoch FROM max(stored_at) - max(event_time))::float8, max(event_time) "
        "FROM fraud_predictions WHERE stored_at > %s",
        (now - window,),
    ).fetchone()
    assert row is not None
    rows, appended, scored, behind, newest = row
    start: Literal["append", "scored"] = "append" if appended is not None else "scored"
    percentiles = appended if appended is not None else scored
    p50, p99 = percentiles if percentiles is not None else (None, None)
    return Processing(window, int(rows), start, p50, p99, behind, newest)


def minute_series(conn: Connection, since: datetime) -> pd.DataFrame:
    """Per minute (all engines): volume, decisions, amounts and latency p50/p99."""
    frame = _frame(
        conn,
        "SELECT minute, sum(tx_count)::int8 AS transactions, "
        "       sum(approve_count)::int8 AS approve, sum(review_count)::int8 AS review, "
        "       sum(decline_count)::int8 AS decline, "
        "       sum(amount_sum)::float8 AS amount, "
        "       (array_agg(latency_ms_hist)) AS histograms "
        "FROM rollup_minute WHERE minute >= %s GROUP BY minute ORDER BY minute",
        (since,),
    )
    if frame.empty:
        return frame.assign(latency_p50_ms=[], latency_p99_ms=[]).drop(columns="histograms")
    merged = [_merge(histograms) for histograms in frame.pop("histograms")]
    frame["latency_p50_ms"] = [percentile_ms(h, 0.50) for h in merged]
    frame["latency_p99_ms"] = [percentile_ms(h, 0.99) for h in merged]
    return frame


def _merge(histograms: list[list[int]], width: int = 0) -> np.ndarray:
    width = max([width, *(len(h) for h in histograms)])
    out = np.zeros(width)
    for histogram in histograms:
        out[: len(histogram)] += histogram
    return out


def engines(
    conn: Connection, now: datetime, within: timedelta = timedelta(hours=1)
) -> pd.DataFrame:
    """Each engine that reported ``within`` the last hour: its last status row and how old
    its heartbeat is (engines stopped longer ago are history, not health)."""
    return _frame(
        conn,
        "SELECT engine_id, engine, consumer_group, model_version, partitions, throughput_tps, "
        "       lag, batch_ms_p50, batch_ms_p99, dlq_total, started_at, heartbeat_at, "
        "       extract(epoch FROM %(now)s - heartbeat_at)::float8 AS heartbeat_age_s "
        "FROM engine_status WHERE heartbeat_at > %(since)s ORDER BY heartbeat_at DESC",
        {"now": now, "since": now - within},
    )


def latest_alerts(conn: Connection, limit: int = 20) -> pd.DataFrame:
    """The newest review and decline decisions (index ``fraud_predictions_alerts``)."""
    return _frame(conn, _ALERTS, (limit,))


def card_history(conn: Connection, card_id: str, limit: int = 20) -> pd.DataFrame:
    return _frame(conn, _CARD, (card_id, limit))


def search(conn: Connection, text: str, limit: int = 200) -> pd.DataFrame:
    """Predictions whose transaction id, card token or terminal id is exactly ``text``, newest
    first, with their labels and verdict (``label``, ``verdict``: None while unknown)."""
    return _frame(conn, _SEARCH, {"q": text.strip(), "limit": limit})


def _like(text: str) -> str:
    """``text`` matched literally by LIKE (its wildcards and the escape character escaped)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def card_fragment(
    conn: Connection, fragment: str, since: datetime, cards: int = 10, limit: int = 200
) -> pd.DataFrame:
    """The predictions of the cards (at most ``cards``, the most recently stored first) whose
    token starts or ends with ``fragment`` among the predictions stored after ``since``: each
    card's latest ``limit``, with labels and verdict as ``search`` gives them."""
    literal = _like(fragment.strip())
    return _frame(
        conn,
        _FRAGMENT,
        {"since": since, "starts": literal + "%", "ends": "%" + literal, "cards": cards,
         "limit": limit},
    )  # fmt: skip


def dlq_counts(conn: Connection, now: datetime) -> dict[str, int]:
    row = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE received_at > %s - interval '1 hour') "
        "FROM dlq_events",
        (now,),
    ).fetchone()
    assert row is not None
    return {"total": int(row[0]), "last_hour": int(row[1])}


def latest_rejected(conn: Connection, limit: int = 20) -> pd.DataFrame:
    return _frame(
        conn,
        "SELECT received_at, source_topic, source_partition, source_offset, reason "
        "FROM dlq_events ORDER BY id DESC LIMIT %s",
        (limit,),
    )


def score_histogram(conn: Connection, since: datetime, until: datetime) -> np.ndarray:
    """Predictions stored in ``[since, until)`` per score bin (``sink.SCORE_BINS``), summed
    from the minute rollups."""
    rows = conn.execute(
        "SELECT score_hist FROM rollup_minute WHERE minute >= %s AND minute < %s",
        (since, until),
    ).fetchall()
    return _merge([row[0] for row in rows], SCORE_BINS)


def drift_model(conn: Connection, since: datetime, until: datetime) -> str | None:
    """The model that scored last in the hours of ``[since, until)`` among those with feature
    counts."""
    row = conn.execute(
        "SELECT model_version FROM feature_hour "
        "WHERE hour >= date_trunc('hour', %s::timestamptz) AND hour < %s "
        "ORDER BY hour DESC LIMIT 1",
        (since, until),
    ).fetchone()
    return None if row is None else str(row[0])


def model_profile(conn: Connection, model_version: str) -> FeatureProfile | None:
    """The training profile ``model_version`` was saved with, as stored by an engine."""
    row = conn.execute(
        "SELECT profile FROM model_profiles WHERE model_version = %s", (model_version,)
    ).fetchone()
    return None if row is None else FeatureProfile.from_metadata({"profile": row[0]})


def feature_histograms(
    conn: Connection, model_version: str, since: datetime, until: datetime
) -> dict[str, np.ndarray]:
    """Per profiled feature, the predictions stored by ``model_version`` in the hours of
    ``[since, until)`` (the first one whole) per bin of its training profile, summed from the
    hourly histograms."""
    rows = conn.execute(
        "SELECT feature, counts FROM feature_hour "
        "WHERE hour >= date_trunc('hour', %s::timestamptz) AND hour < %s "
        "AND model_version = %s",
        (since, until, model_version),
    ).fetchall()
    per_feature: dict[str, list[list[int]]] = {}
    for feature, counts in rows:
        per_feature.setdefault(feature, []).append(counts)
    return {feature: _merge(counts) for feature, counts in per_feature.items()}


_TERMINAL_RISK = """
WITH flagged AS (
    -- Stored no earlier than it happened: the stored_at bound only lets the partial alert
    -- index narrow the rows; alerts and transactions are both counted by event day.
    SELECT terminal_id, count(*) AS alerts FROM fraud_predictions
    WHERE decision <> 'approve' AND stored_at >= %(since)s::date
      AND event_time >= %(since)s::date
    GROUP BY terminal_id ORDER BY alerts DESC LIMIT %(limit)s
)
SELECT f.terminal_id, l.x, l.y, l.lat, l.lon, f.alerts, d.transactions,
       f.alerts::float8 / greatest(d.transactions, f.alerts) AS alert_rate
FROM flagged f
JOIN terminal_locations l USING (terminal_id)
CROSS JOIN LATERAL (
    SELECT coalesce(sum(tx_count), 0) AS transactions FROM terminal_daily t
    WHERE t.terminal_id = f.terminal_id AND t.day >= %(since)s::date
) d
WHERE (l.x IS NOT NULL AND l.y IS NOT NULL) OR (l.lat IS NOT NULL AND l.lon IS NOT NULL)
ORDER BY f.alerts DESC
"""


def terminal_risk(conn: Connection, since: datetime, limit: int = 2000) -> pd.DataFrame:
    """Terminals with a known location and alerts (review or decline) on transactions since
    the UTC day of ``since``: alerts, transactions (from the daily counts) and their ratio,
    the most alerted first."""
    return _frame(conn, _TERMINAL_RISK, {"since": since, "limit": limit})


def quality_days(conn: Connection, first: date, last: date) -> pd.DataFrame:
    """Measured days in ``[first, last)`` (``store.quality``), one row per day, model and
    role: ``champion`` (it decided) or ``shadow`` (a challenger scored on the same traffic)."""
    return _frame(
        conn,
        'SELECT day, model_version, role, transactions, frauds, average_precision AS "AP", '
        '       auc_roc AS "AUC-ROC", card_precision_at_k AS "CP@k", '
        '       money_recall AS "money recall@k", k, flagged, flagged_frauds '
        "FROM quality_daily WHERE day >= %s AND day < %s ORDER BY day, role, model_version",
        (first, last),
    )


def model_events(conn: Connection, limit: int = 50) -> pd.DataFrame:
    """The latest changes of champion and challenger, newest first (``model_events``)."""
    return _frame(
        conn,
        "SELECT at, action, version, previous, actor, evidence::text AS evidence "
        "FROM model_events ORDER BY at DESC, id DESC LIMIT %s",
        (limit,),
    )


def quality_histogram(conn: Connection, first: date, last: date) -> pd.DataFrame:
    """Scores of legitimate and fraudulent transactions of the measured days in
    ``[first, last)``, in ``store.quality.HISTOGRAM_BINS`` bins (the models that decided)."""
    return _frame(
        conn,
        "SELECT bin, sum(legitimate)::int8 AS legitimate, sum(fraud)::int8 AS fraud "
        "FROM quality_histogram WHERE day >= %s AND day < %s AND role = 'champion' "
        "GROUP BY bin ORDER BY bin",
        (first, last),
    )


def stored_span(conn: Connection) -> tuple[datetime, datetime] | None:
    """When the first and the last stored prediction arrived (from the minute rollups)."""
    row = conn.execute("SELECT min(minute), max(minute) FROM rollup_minute").fetchone()
    return None if row is None or row[0] is None else (row[0], row[1])
