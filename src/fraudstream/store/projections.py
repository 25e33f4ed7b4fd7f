"""The dashboard's read models, kept beside the predictions: per-minute rollups, terminal
locations, drift counts; and the challenger's shadow scores (docs/adr/0008). Each is a
``Projection`` the sink registers: written in the batch's transaction from the rows actually
inserted (a replayed batch adds nothing), never read by the engines, never deciding what is
stored. The exactly-once core (``sink.py``) knows none of
their tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import psycopg
from psycopg.types.json import Jsonb

from fraudstream.model.profile import SCORE_BINS

__all__ = [
    "DASHBOARD_PROJECTIONS",
    "LATENCY_BUCKETS_MS",
    "SCORE_BINS",
    "Cases",
    "FeatureDrift",
    "MinuteRollups",
    "Observed",
    "Projection",
    "ShadowPredictions",
    "ShadowRuleDecisions",
    "ShadowRules",
    "ShadowScores",
    "TerminalLocations",
    "TerminalPlaces",
    "rollup_ctes",
]

LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000)
"""Latency histogram bounds (event time → stored): bucket 0 is under 1 ms, bucket i counts
[bounds[i-1], bounds[i]) ms, and the last bucket everything from 30 s up."""


@dataclass(frozen=True)
class TerminalPlaces:
    """Where a batch's terminals are, one row per terminal (floats, NaN where unknown)."""

    terminal_ids: np.ndarray  # object
    x: np.ndarray
    y: np.ndarray
    lat: np.ndarray
    lon: np.ndarray

    @property
    def coordinates(self) -> tuple[np.ndarray, ...]:
        """x, y, lat, lon: the columns of ``terminal_locations`` after the id."""
        return self.x, self.y, self.lat, self.lon


@dataclass(frozen=True)
class Observed:
    """What a batch shows besides its predictions, for the dashboard: where its terminals are
    and how its features fall in the bins of the scoring model's training profile
    (``model.profile``; none when the model has none)."""

    terminals: TerminalPlaces
    engine: str
    model_version: str
    profile: dict[str, Any] | None = None
    feature_counts: Mapping[str, np.ndarray] | None = None
    shadow: ShadowScores | None = None
    shadow_rules: ShadowRuleDecisions | None = None


@dataclass(frozen=True)
class ShadowRuleDecisions:
    """What a rule set in shadow would have decided of a batch's rows (with the champion's
    scores): stored beside the live decisions, never acted on."""

    rules_version: str
    tx_ids: np.ndarray
    event_times: np.ndarray  # datetime64, UTC
    decisions: np.ndarray
    rule_hits: list[list[str]]


@dataclass(frozen=True)
class ShadowScores:
    """A challenger's scores of a batch's rows and what its thresholds and the rules would
    have decided (docs/adr/0008): kept beside the champion's predictions, never acted on."""

    model_version: str
    tx_ids: np.ndarray
    event_times: np.ndarray  # datetime64, UTC
    scores: np.ndarray
    decisions: np.ndarray


class Projection(Protocol):
    """A read model fed in the batch's transaction."""

    def ctes(self, inserted: str) -> str | None:
        """CTEs (SQL, no leading comma) fed by ``inserted`` — the rows the core statement
        inserted: tx_id, event_time, card_id, terminal_id, amount, score, decision, engine,
        stored_at, late — joined to the core statement; None for none."""
        ...

    def write(self, cursor: psycopg.Cursor[Any], observed: Observed | None, all_new: bool) -> None:
        """Statements after the insert, from what the batch ``observed`` (``all_new``: every
        row of the batch was inserted now)."""
        ...

    def committed(self) -> None:
        """The batch's transaction committed (remember what is now stored)."""
        ...


_BOUNDS = ", ".join(str(bound) for bound in LATENCY_BUCKETS_MS)


def _histogram(name: str, value: str, first: int, last: int) -> str:
    """A CTE counting ``measured`` rows per minute, engine (the keys of ``totals``) and
    ``value`` in [first, last]: the rows counted per value first (a handful of groups), then
    laid on the values. Joining the rows themselves to every value made a join many times
    their number, sorted twice: most of the rollup's time in a step of 200 rows."""
    return f"""{name} AS (
    SELECT k.minute, k.engine, array_agg(coalesce(c.n, 0) ORDER BY b.{value}) AS counts
    FROM totals k
    CROSS JOIN generate_series({first}, {last}) AS b({value})
    LEFT JOIN (
        SELECT minute, engine, {value}, count(*) AS n FROM measured GROUP BY 1, 2, 3
    ) c ON c.minute = k.minute AND c.engine = k.engine AND c.{value} = b.{value}
    GROUP BY 1, 2
)"""  # noqa: S608 (names and numbers from this module)


def rollup_ctes(source: str) -> str:
    """The CTEs of a ``WITH`` clause that add the rows of ``source`` (a relation with
    event_time, amount, score, decision, engine and stored_at; a name written in code, never
    input) to ``rollup_minute``; the last one, ``rollup``, returns a row per minute touched."""
    return f"""measured AS (
    SELECT date_trunc('minute', stored_at) AS minute, engine, amount, decision,
           width_bucket(extract(epoch FROM stored_at - event_time) * 1000,
                        ARRAY[{_BOUNDS}]::numeric[]) AS bucket,
           least(width_bucket(score, 0, 1, {SCORE_BINS}), {SCORE_BINS}) AS score_bin
    FROM {source}
), totals AS (
    SELECT minute, engine, count(*) AS tx_count, sum(amount) AS amount_sum,
        count(*) FILTER (WHERE decision = 'approve') AS approve_count,
        count(*) FILTER (WHERE decision = 'review') AS review_count,
        count(*) FILTER (WHERE decision = 'decline') AS decline_count,
        coalesce(sum(amount) FILTER (WHERE decision = 'review'), 0) AS amount_review,
        coalesce(sum(amount) FILTER (WHERE decision = 'decline'), 0) AS amount_decline
    FROM measured GROUP BY minute, engine
), {_histogram("histogram", "bucket", 0, len(LATENCY_BUCKETS_MS))},
{_histogram("scores", "score_bin", 1, SCORE_BINS)}, rollup AS (
    INSERT INTO rollup_minute AS r (minute, engine, tx_count, amount_sum, approve_count,
        review_count, decline_count, amount_review, amount_decline, latency_ms_hist, score_hist)
    SELECT t.minute, t.engine, t.tx_count, t.amount_sum, t.approve_count, t.review_count,
        t.decline_count, t.amount_review, t.amount_decline, h.counts, s.counts
    FROM totals t JOIN histogram h USING (minute, engine) JOIN scores s USING (minute, engine)
    ON CONFLICT (minute, engine) DO UPDATE SET
        tx_count = r.tx_count + excluded.tx_count,
        amount_sum = r.amount_sum + excluded.amount_sum,
        approve_count = r.approve_count + excluded.approve_count,
        review_count = r.review_count + excluded.review_count,
        decline_count = r.decline_count + excluded.decline_count,
        amount_review = r.amount_review + excluded.amount_review,
        amount_decline = r.amount_decline + excluded.amount_decline,
        latency_ms_hist = fs_histogram_add(r.latency_ms_hist, excluded.latency_ms_hist),
        score_hist = fs_histogram_add(r.score_hist, excluded.score_hist)
    RETURNING 1
)"""  # noqa: S608


class MinuteRollups:
    """``rollup_minute``: per minute and engine, counts, amounts, decisions, latency and score
    histograms (the Live page reads minutes, never the predictions)."""

    def ctes(self, inserted: str) -> str:
        return rollup_ctes(inserted)

    def write(self, cursor: psycopg.Cursor[Any], observed: Observed | None, all_new: bool) -> None:
        return None

    def committed(self) -> None:
        return None


class TerminalLocations:
    """``terminal_locations``: where each terminal is, once per terminal (the map)."""

    def __init__(self) -> None:
        self._located: set[str] = set()
        self._pending: list[str] = []

    def ctes(self, inserted: str) -> None:
        return None

    def write(self, cursor: psycopg.Cursor[Any], observed: Observed | None, all_new: bool) -> None:
        self._pending = []
        if observed is None:
            return
        places = observed.terminals
        # A set lookup per terminal of the batch: most batches bring no terminal not seen.
        unseen = np.array([t not in self._located for t in places.terminal_ids], dtype=bool)
        if not unseen.any():
            return
        ids = [str(t) for t in places.terminal_ids[unseen]]
        cursor.execute(  # one statement, the columns as (binary: cheaper to dump) arrays
            "INSERT INTO terminal_locations (terminal_id, x, y, lat, lon) "
            "SELECT * FROM unnest(%b::text[], %b::float8[], %b::float8[], %b::float8[], "
            "%b::float8[]) ON CONFLICT (terminal_id) DO NOTHING",
            [ids, *(_floats(axis[unseen]) for axis in places.coordinates)],
        )
        self._pending = ids

    def committed(self) -> None:
        self._located.update(self._pending)
        self._pending = []


class FeatureDrift:
    """``model_profiles`` once per model and ``feature_hour``: the batch's feature values
    counted into the training profile's bins, only when every row of the batch was new."""

    def __init__(self) -> None:
        self._profiled: set[str] = set()
        self._pending: str | None = None

    def ctes(self, inserted: str) -> None:
        return None

    def write(self, cursor: psycopg.Cursor[Any], observed: Observed | None, all_new: bool) -> None:
        self._pending = None
        if observed is None:
            return
        if observed.profile is not None and observed.model_version not in self._profiled:
            cursor.execute(
                "INSERT INTO model_profiles (model_version, profile) VALUES (%s, %s) "
                "ON CONFLICT (model_version) DO NOTHING",
                (observed.model_version, Jsonb(observed.profile)),
            )
            self._pending = observed.model_version
        if all_new and observed.feature_counts:
            # One statement for every feature (one per feature cost PostgreSQL as much as
            # the batch's predictions on a step of one transaction); the histograms differ in
            # length, so each travels as an array literal.
            names = list(observed.feature_counts)
            histograms = [
                "{" + ",".join(map(str, observed.feature_counts[name].tolist())) + "}"
                for name in names
            ]
            cursor.execute(
                "INSERT INTO feature_hour AS f (hour, engine, model_version, feature, counts) "
                "SELECT date_trunc('hour', clock_timestamp()), %s, %s, u.feature, "
                "u.counts::bigint[] FROM unnest(%s::text[], %s::text[]) AS u(feature, counts) "
                "ON CONFLICT (hour, engine, model_version, feature) DO UPDATE SET "
                "counts = fs_histogram_add(f.counts, excluded.counts)",
                (observed.engine, observed.model_version, names, histograms),
            )

    def committed(self) -> None:
        if self._pending is not None:
            self._profiled.add(self._pending)
        self._pending = None


class ShadowPredictions:
    """``shadow_predictions``: the challenger's score and decision of each row the champion
    decided, in the same transaction (a replayed batch finds them stored: nothing doubles)."""

    def ctes(self, inserted: str) -> None:
        return None

    def write(self, cursor: psycopg.Cursor[Any], observed: Observed | None, all_new: bool) -> None:
        shadow = None if observed is None else observed.shadow
        if shadow is None or not len(shadow.tx_ids):
            return
        cursor.execute(
            "INSERT INTO shadow_predictions (tx_id, model_version, event_time, score, decision) "
            "SELECT t, %s, e, s, d FROM unnest(%b::text[], %b::timestamptz[], %b::float8[], "
            "%b::text[]) AS u(t, e, s, d) ON CONFLICT (tx_id, model_version) DO NOTHING",
            (
                shadow.model_version, [str(t) for t in shadow.tx_ids],
                pd.to_datetime(shadow.event_times, utc=True).to_pydatetime().tolist(),
                [float(v) for v in shadow.scores], [str(d) for d in shadow.decisions],
            ),
        )  # fmt: skip

    def committed(self) -> None:
        return None


class Cases:
    """``cases`` and ``case_alerts``: each alert (a review or decline) opens a case for its
    card or joins the card's unresolved one, raising its priority to the alert's
    (``fs_case_priority``). A card lives in one partition, so one engine writes its cases."""

    def ctes(self, inserted: str) -> str:
        return f"""alerted AS (
    SELECT tx_id, card_id, score, amount, stored_at,
           fs_case_priority(decision, score, amount) AS priority
    FROM {inserted} WHERE decision IN ('review', 'decline')
), case_opened AS (
    INSERT INTO cases AS c (card_id, priority, opened_at, last_alert_at, alert_count,
                            max_score, total_amount, updated_at)
    SELECT card_id, min(priority), min(stored_at), max(stored_at), count(*), max(score),
           sum(amount), max(stored_at)
    FROM alerted GROUP BY card_id
    ON CONFLICT (card_id) WHERE status IN ('open', 'investigating', 'escalated')
    DO UPDATE SET priority = least(c.priority, excluded.priority),
        last_alert_at = greatest(c.last_alert_at, excluded.last_alert_at),
        alert_count = c.alert_count + excluded.alert_count,
        max_score = greatest(c.max_score, excluded.max_score),
        total_amount = c.total_amount + excluded.total_amount,
        updated_at = greatest(c.updated_at, excluded.updated_at)
    RETURNING case_id, card_id
), case_linked AS (
    INSERT INTO case_alerts (tx_id, case_id)
    SELECT a.tx_id, o.case_id FROM alerted a JOIN case_opened o USING (card_id)
    RETURNING 1
)"""  # noqa: S608 (``inserted`` is a name written in code)

    def write(self, cursor: psycopg.Cursor[Any], observed: Observed | None, all_new: bool) -> None:
        return None

    def committed(self) -> None:
        return None


class ShadowRules:
    """``shadow_rule_decisions``: a shadow rule set's decision of each row, in the batch's
    transaction (a replayed batch finds them stored)."""

    def ctes(self, inserted: str) -> None:
        return None

    def write(self, cursor: psycopg.Cursor[Any], observed: Observed | None, all_new: bool) -> None:
        shadow = None if observed is None else observed.shadow_rules
        if shadow is None or not len(shadow.tx_ids):
            return
        cursor.execute(
            "INSERT INTO shadow_rule_decisions (tx_id, rules_version, event_time, decision, "
            "rule_hits) SELECT t, %s, e, d, coalesce(string_to_array(h, ','), '{}') "
            "FROM unnest(%s::text[], %s::timestamptz[], %s::text[], %s::text[]) AS u(t, e, d, h) "
            "ON CONFLICT (tx_id, rules_version) DO NOTHING",
            (
                shadow.rules_version, [str(t) for t in shadow.tx_ids],
                pd.to_datetime(shadow.event_times, utc=True).to_pydatetime().tolist(),
                [str(d) for d in shadow.decisions],
                [",".join(hits) or None for hits in shadow.rule_hits],
            ),
        )  # fmt: skip

    def committed(self) -> None:
        return None


def DASHBOARD_PROJECTIONS() -> list[Projection]:
    """A fresh set of the dashboard's projections (each sink keeps its own memory of what
    it stored), the analysts' cases and the shadows: the challenger's scores, the shadow
    rules' decisions."""
    return [
        MinuteRollups(), TerminalLocations(), FeatureDrift(), Cases(), ShadowPredictions(),
        ShadowRules(),
    ]  # fmt: skip


def _floats(values: np.ndarray) -> list[float | None]:
    """Floats for PostgreSQL, NaN as NULL (converted in one go: per value it was a few
    percent of the writer thread while new terminals kept coming)."""
    converted = values.astype(object)
    converted[np.isnan(values)] = None
    floats: list[float | None] = converted.tolist()
    return floats
