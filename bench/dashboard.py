"""The dashboard's queries over a large predictions table, on a private PostgreSQL server.

The table is filled as a month of traffic would leave it: predictions spread over 30 days
(COPY), the per-minute rollups built from them as the sink builds them, labels for the frauds,
terminal counts and locations, feature histograms per minute, engine status and dead letters;
then ``ANALYZE``. Each page's queries (``dashboard.queries``,
the functions the pages call, with the arguments they pass) run repeatedly; the report gives
p50 and p95 per query. Freshness: how long after a sink commit a new alert is returned by the
Live page's query (the page itself re-runs every ``dashboard.refresh_s``).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg
from psycopg.types.json import Jsonb

from bench.rows import engine_columns
from bench.stages import Result
from fraudstream.config import Settings
from fraudstream.dashboard import queries
from fraudstream.model.profile import PROFILED_FEATURES, FeatureProfile
from fraudstream.policy import RuleSet, default_rules
from fraudstream.stack.postgres import EmbeddedPostgres
from fraudstream.store import cases, migrations
from fraudstream.store.backtest import backtest
from fraudstream.store.db import connect, conninfo  # (the private server has no dashboard user)
from fraudstream.store.projections import Cases, rollup_ctes
from fraudstream.store.quality import refresh_quality
from fraudstream.store.sink import PredictionSink

__all__ = ["run"]

Progress = Callable[[str], None]
_CHUNK = 500_000
_DAYS = 30
_SLA = (60, 240, 1440)


def run(base: Settings, *, rows: int, repeats: int, progress: Progress) -> list[Result]:
    with _private_database(base) as settings:
        now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
        with connect(settings) as conn:
            _fill(conn, rows, now, progress)
            cards, terminals, case_ids = _probes(conn)
        progress("measuring the dashboard's queries")
        results = _measure(settings, now, rows, repeats, cards, terminals, case_ids)
        results.append(_freshness(settings, repeats))
        progress("measuring a rule set's backtest over every stored prediction")
        results.append(_backtest(settings, now, rows, cards))
    return results


@contextmanager
def _private_database(base: Settings) -> Iterator[Settings]:
    from bench.engine import _free_port

    with tempfile.TemporaryDirectory(prefix="fraudstream-bench-dashboard-") as root:
        database = base.database.model_copy(
            update={"url": None, "host": "127.0.0.1", "port": _free_port(), "name": "fraudstream"}
        )
        settings = base.model_copy(
            update={"state_dir": Path(root) / "state", "pipeline": False, "database": database}
        )
        server = EmbeddedPostgres(settings)
        server.start()
        try:
            with connect(settings) as conn:
                migrations.migrate(conn)
            yield settings
        finally:
            server.stop()


def _fill(conn: psycopg.Connection[Any], rows: int, now: datetime, progress: Progress) -> None:
    """``rows`` predictions over the last 30 days, their rollups, labels, status and DLQ."""
    rng = np.random.default_rng(7)
    span_us = _DAYS * 86_400 * 1_000_000
    start = now - timedelta(days=_DAYS)
    with conn.cursor() as cursor:
        for first in range(0, rows, _CHUNK):
            n = min(_CHUNK, rows - first)
            progress(f"dashboard: storing predictions {first + n:,} / {rows:,}")
            offsets = np.sort(rng.integers(0, span_us, n))
            scores = rng.beta(0.6, 12.0, n)
            decision = np.where(
                scores > 0.67, "decline", np.where(scores > 0.32, "review", "approve")
            )
            event = pd.to_datetime(start) + pd.to_timedelta(offsets, unit="us")
            latency = pd.to_timedelta(rng.gamma(2.0, 30.0, n), unit="ms")
            frame = pd.DataFrame(
                {
                    "tx_id": [f"b-{i:010d}" for i in range(first, first + n)],
                    "event_time": event,
                    "card_id": [f"tok_{c:024d}" for c in rng.integers(0, 1_000_000, n)],
                    "terminal_id": [f"T{t:07d}" for t in rng.integers(0, 100_000, n)],
                    "amount": np.round(rng.gamma(2.0, 30.0, n), 2),
                    "score": scores,
                    "decision": decision,
                    "model_version": "m-bench",
                    "engine": "local",
                    "scored_at": event + latency * 0.8,
                    "stored_at": event + latency,
                    **engine_columns(rng, n, text=True),
                }
            )
            with cursor.copy(
                f"COPY fraud_predictions ({', '.join(frame.columns)}) FROM STDIN"
            ) as copy:
                copy.write(frame.to_csv(sep="\t", header=False, index=False))
            frauds = frame.loc[(scores > 0.5) | (rng.random(n) < 0.002), ["tx_id"]].assign(
                source="bench", is_fraud="t",
                reported_at=frame["event_time"] + timedelta(days=2),
            )  # fmt: skip
            with cursor.copy(f"COPY labels ({', '.join(frauds.columns)}) FROM STDIN") as copy:
                copy.write(frauds.to_csv(sep="\t", header=False, index=False))
            conn.commit()
        progress("dashboard: building the minute rollups")
        # The sink's own rollup definition, over the whole table instead of one batch.
        cursor.execute(f"WITH {rollup_ctes('fraud_predictions')} SELECT count(*) FROM rollup")  # noqa: S608
        conn.commit()
        progress("dashboard: cases from the alerts, as the sink opens them; older ones resolved")
        cursor.execute(f"WITH {Cases().ctes('fraud_predictions')} SELECT count(*) FROM case_linked")  # noqa: S608
        cursor.execute(
            "UPDATE cases SET status = 'resolved_legitimate', resolved_at = opened_at + "
            "interval '1 hour', resolved_by = 'bench' WHERE opened_at < %s",
            (now - timedelta(days=2),),
        )
        conn.commit()
        progress("dashboard: terminal counts, locations and the features' minute histograms")
        _fill_observed(cursor, now)
        conn.commit()
        progress("dashboard: measuring the matured days' model quality, as the engine does")
        refresh_quality(conn, now.date(), maturity_days=7, lookback_days=_DAYS + 1)
        cursor.execute(
            "INSERT INTO engine_status (engine_id, engine, consumer_group, model_version, "
            "partitions, throughput_tps, lag, started_at, heartbeat_at) VALUES "
            "('bench-1', 'local', 'g', 'm-bench', '{0,1,2,3}', 4000, 10, now(), now())"
        )
        cursor.execute(
            "INSERT INTO dlq_events (source_topic, source_partition, source_offset, reason) "
            "SELECT 'transactions', 0, i, 'not valid JSON' FROM generate_series(1, 1000) i"
        )
        conn.commit()
        cursor.execute("ANALYZE")
    conn.commit()


def _fill_observed(cursor: psycopg.Cursor[Any], now: datetime) -> None:
    """What engines store besides predictions: daily counts per terminal (as the sink adds
    them), a location per terminal, the model's training profile and, for every hour of the
    month, a histogram per profiled feature."""
    cursor.execute(
        "INSERT INTO terminal_daily (terminal_id, day, tx_count) "
        "SELECT terminal_id, (event_time AT TIME ZONE 'UTC')::date, count(*) "
        "FROM fraud_predictions GROUP BY 1, 2"
    )
    cursor.execute(
        "INSERT INTO terminal_locations (terminal_id, x, y) "
        "SELECT DISTINCT terminal_id, 0.0, 0.0 FROM fraud_predictions"
    )
    cursor.execute("UPDATE terminal_locations SET x = random() * 100, y = random() * 100")
    rng = np.random.default_rng(8)
    training = pd.DataFrame({name: rng.gamma(2.0, 30.0, 10_000) for name in PROFILED_FEATURES})
    profile = FeatureProfile.of_training(training, rng.beta(0.6, 12.0, 10_000))
    cursor.execute(
        "INSERT INTO model_profiles (model_version, profile) VALUES ('m-bench', %s)",
        (Jsonb(profile.as_dict()),),
    )
    bins = max(len(cuts) + 2 for cuts in profile.cuts.values())
    cursor.execute(
        # A random count per bin; the hour in the subquery makes it run once per row.
        "INSERT INTO feature_hour (hour, engine, model_version, feature, counts) "
        "SELECT h, 'local', 'm-bench', f, ARRAY(SELECT (random() * 3600 + 0 * extract(epoch "
        "FROM h))::int8 FROM generate_series(1, %s)) "
        "FROM generate_series(date_trunc('hour', %s::timestamptz), %s, interval '1 hour') AS h, "
        "unnest(%s::text[]) AS f",
        (bins, now - timedelta(days=_DAYS), now, list(PROFILED_FEATURES)),
    )


def _probes(conn: psycopg.Connection[Any]) -> tuple[list[str], list[str], list[int]]:
    cards = [r[0] for r in conn.execute("SELECT card_id FROM fraud_predictions LIMIT 20")]
    terminals = [r[0] for r in conn.execute("SELECT terminal_id FROM fraud_predictions LIMIT 20")]
    open_cases = conn.execute(
        "SELECT case_id FROM cases WHERE resolved_at IS NULL ORDER BY case_id LIMIT 20"
    )
    return cards, terminals, [int(r[0]) for r in open_cases] or [0]


def _measure(
    settings: Settings, now: datetime, rows: int, repeats: int, cards: list[str],
    terminals: list[str], case_ids: list[int],
) -> list[Result]:  # fmt: skip
    day = now.replace(hour=0, minute=0)
    page_queries: list[tuple[str, Callable[[psycopg.Connection[Any], int], object]]] = [
        ("Live: headline figures (5 min)",
         lambda c, _i: queries.live_summary(c, now, timedelta(minutes=5))),
        ("Live: minute series (1 h)",
         lambda c, _i: queries.minute_series(c, now - timedelta(hours=1))),
        ("Live: latest alerts", lambda c, _i: queries.latest_alerts(c, 20)),
        ("Live/System: engines", lambda c, _i: queries.engines(c, now)),
        ("Cases: queue and the totals of every view",
         lambda c, _i: (cases.case_queue(c, view="all open", user="ana", now=now,
                                         sla_minutes=_SLA),
                        cases.case_totals(c, user="ana", now=now, sla_minutes=_SLA))),
        ("Cases: a case's alerts, card timeline, earlier cases",
         lambda c, i: (cases.case_alerts(c, case_ids[i % len(case_ids)]),
                       cases.card_timeline(c, case_ids[i % len(case_ids)]),
                       cases.earlier_cases(c, case_ids[i % len(case_ids)]))),
        ("Explore: by card token", lambda c, i: queries.search(c, cards[i % 20])),
        ("Explore: by terminal", lambda c, i: queries.search(c, terminals[i % 20])),
        ("System: dead letters", lambda c, _i: (queries.dlq_counts(c, now),
                                                queries.latest_rejected(c, 20))),
        ("Drift: score histograms (24 h + a reference day)",
         lambda c, _i: (queries.score_histogram(c, now - timedelta(hours=24), now),
                        queries.score_histogram(c, day - timedelta(days=20),
                                                day - timedelta(days=19)))),
        ("Drift: features vs the training window (24 h)",
         lambda c, _i: (queries.model_profile(c, queries.drift_model(c, now - timedelta(hours=24),
                                                                    now) or ""),
                        queries.feature_histograms(c, "m-bench", now - timedelta(hours=24),
                                                   now))),
        ("Drift: features, 7 days vs a reference day",
         lambda c, _i: (queries.feature_histograms(c, "m-bench", now - timedelta(days=7), now),
                        queries.feature_histograms(c, "m-bench", day - timedelta(days=20),
                                                   day - timedelta(days=19)))),
        ("Explore: terminal map (alerts of 7 days)",
         lambda c, _i: queries.terminal_risk(c, now - timedelta(days=7))),
        ("Quality: measured days and histograms (14 days)",
         lambda c, _i: (queries.quality_days(c, (day - timedelta(days=21)).date(), day.date()),
                        queries.quality_histogram(c, (day - timedelta(days=21)).date(),
                                                  day.date()))),
    ]  # fmt: skip
    results = []
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        for name, query in page_queries:
            query(conn, 0)  # warm the cache, as a page that refreshes does
            times = []
            for i in range(repeats):
                started = time.perf_counter()
                query(conn, i)
                times.append((time.perf_counter() - started) * 1000)
            p50 = statistics.median(times)
            p95 = float(np.percentile(times, 95))
            results.append(
                Result(
                    f"dashboard query — {name}",
                    p95,
                    "ms p95",
                    [p50, p95],
                    f"p50 {p50:.1f} ms over {repeats} runs, {rows:,} predictions stored",
                )
            )
    return results


_BACKTESTED = RuleSet.model_validate(
    {"version": "bench", "lists": {"watched": frozenset()}, "rule": [
        *[r.model_dump(exclude_unset=True) for r in default_rules().rule],
        {"name": "burst", "action": "review",
         "when": "card_tx_count_1h > 5 and amount > 3 × card_amount_mean_30d"},
        {"name": "watched", "action": "decline", "when": "card_id in watched"},
    ]}
)  # fmt: skip
"""The shipped rules, an aggregate expression and a list: what an analyst backtests."""


def _backtest(settings: Settings, now: datetime, rows: int, cards: list[str]) -> Result:
    """The Rules page's backtest of a draft over the whole stored month (3 runs)."""
    rules = _BACKTESTED.model_copy(update={"lists": {"watched": frozenset(cards[:5])}})
    times, result = [], None
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        for _ in range(3):
            started = time.perf_counter()
            result = backtest(
                conn, rules, first=(now - timedelta(days=_DAYS + 1)).date(), last=now.date(),
                thresholds={"review": 0.32, "decline": 0.67},
                matured_before=(now - timedelta(days=7)).date(),
            )  # fmt: skip
            times.append(time.perf_counter() - started)
    assert result is not None
    return Result(
        "rules backtest: the shipped rules + an aggregate expression + a list, whole month",
        statistics.median(times), "s", times,
        f"{result.rows:,} stored predictions read and decided per run (3 runs); "
        f"goal: within a minute over 10 M",
    )  # fmt: skip


def _freshness(settings: Settings, repeats: int) -> Result:
    """From the sink's commit of a new alert to the Live query returning it."""
    sink = PredictionSink(connect(settings), consumer_group="bench", features_version="1")
    rng = np.random.default_rng(9)
    waits = []
    with psycopg.connect(conninfo(settings), autocommit=True) as reader:
        for i in range(repeats):
            now = datetime.now(timezone.utc)
            row = pd.DataFrame(
                {
                    "tx_id": [f"fresh-{i}"], "event_time": [now], "card_id": ["tok_fresh"],
                    "terminal_id": ["T-fresh"], "amount": [99.0], "score": [0.9],
                    "decision": ["decline"], "rule_hits": [[]], "reasons": [[]],
                    "model_version": ["m-bench"], "engine": ["local"], "kafka_partition": [0],
                    "kafka_offset": [i], "kafka_time": [now], "scored_at": [now],
                    **engine_columns(rng, 1),
                }
            )  # fmt: skip
            sink.write(row, [])
            committed = time.perf_counter()
            while f"fresh-{i}" not in set(queries.latest_alerts(reader, 20)["tx_id"]):
                time.sleep(0.001)
            waits.append((time.perf_counter() - committed) * 1000)
    sink.conn.close()
    worst = max(waits)
    return Result(
        "dashboard freshness: stored → returned by the Live query", worst, "ms max",
        [statistics.median(waits), worst],
        f"median {statistics.median(waits):.1f} ms; the page re-runs it every "
        f"{settings.dashboard.refresh_s:g} s, so a new alert shows within "
        f"{settings.dashboard.refresh_s:g} s + this",
    )  # fmt: skip
