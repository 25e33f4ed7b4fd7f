"""The champion's life: retraining a challenger on matured labels, the promotion gate, the
rollback floor, and the audit of every change (``model_events``). docs/adr/0008.

The registry holds the pointers (CURRENT, CHALLENGER); the engines follow them. This module
reads the evidence from PostgreSQL, decides with ``model/gate.py`` and moves the pointers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import pandas as pd
import psycopg
from psycopg.types.json import Jsonb

from fraudstream.clock import Clock
from fraudstream.config import Settings
from fraudstream.model.gate import Comparison, compare, daily_pairs
from fraudstream.model.registry import Registry
from fraudstream.store import audit

__all__ = [
    "Retrained",
    "newest_event_day",
    "record_event",
    "retrain",
    "rollback_if_below_floor",
    "run_gate",
]

log = logging.getLogger("fraudstream.model")


def record_event(
    conn: psycopg.Connection[Any],
    action: str,
    version: str,
    *,
    actor: str,
    previous: str | None = None,
    evidence: dict[str, Any] | None = None,
) -> None:
    """The change in ``model_events``, and in the audit log (one transaction)."""
    row = conn.execute(
        "INSERT INTO model_events (action, version, previous, actor, evidence) "
        "VALUES (%s, %s, %s, %s, %s) RETURNING at",
        (action, version, previous, actor, Jsonb(evidence or {})),
    ).fetchone()
    assert row is not None
    audit.record(
        conn, at=row[0], actor=actor, action=_AUDITED[action], object_type="model",
        object_id=version, detail={"event": action, "previous": previous},
    )  # fmt: skip
    conn.commit()


_AUDITED = {
    "challenger": "model.challenge", "retired": "model.challenge", "kept": "model.challenge",
    "promoted": "model.promote", "rolled_back": "model.rollback",
}  # fmt: skip
"""model_events' actions as audit actions."""


def newest_event_day(conn: psycopg.Connection[Any]) -> date | None:
    row = conn.execute("SELECT max(event_time) FROM fraud_predictions").fetchone()
    newest = row[0] if row else None
    return newest.date() if isinstance(newest, datetime) else None


def _trained_until(metadata: dict[str, Any]) -> date:
    """The last day a model's training saw (its latest fold's test week sets thresholds)."""
    window = metadata["training_window"]
    test_start = datetime.fromisoformat(str(window["test_start"])).date()
    return test_start + timedelta(days=int(window["test_days"]) - 1)


def _shadow_rows(
    conn: psycopg.Connection[Any], challenger: str, first: date, last: date
) -> pd.DataFrame:
    """Transactions of days ``[first, last)`` both models scored, with their outcome."""
    since = datetime.combine(first, time(), tzinfo=timezone.utc)
    until = datetime.combine(last, time(), tzinfo=timezone.utc)
    rows = conn.execute(
        "SELECT (p.event_time AT TIME ZONE 'UTC')::date, p.card_id, p.amount::float8, "
        "       coalesce(l.is_fraud, false), p.score, s.score "
        "FROM shadow_predictions s JOIN fraud_predictions p USING (tx_id) "
        "LEFT JOIN LATERAL (SELECT bool_or(is_fraud) AS is_fraud FROM labels "
        "                   WHERE labels.tx_id = p.tx_id) l ON true "
        "WHERE s.model_version = %s AND s.event_time >= %s AND s.event_time < %s",
        (challenger, since, until),
    ).fetchall()
    columns = ["day", "card_id", "amount", "is_fraud", "champion", "challenger"]
    return pd.DataFrame(rows, columns=columns)


def run_gate(
    settings: Settings, conn: psycopg.Connection[Any], *, actor: str = "gate", act: bool = True
) -> tuple[str, Comparison] | None:
    """Compare the challenger with the champion on the matured days since the challenger's
    training data ended; promote it when it passes (``act``). None when there is no
    challenger."""
    registry = Registry(settings.models_dir)
    challenger, champion = registry.challenger(), registry.current()
    if challenger is None or champion is None:
        return None
    newest = newest_event_day(conn)
    first = _trained_until(registry.metadata(challenger)) + timedelta(days=1)
    # Matured days end (exclusive) maturity_days before the newest, as in store/quality.py.
    last = (newest or first) - timedelta(days=settings.engine.quality_maturity_days)
    k = settings.model.review_cards_per_day
    pairs = daily_pairs(_shadow_rows(conn, challenger, first, max(first, last)), k)
    gate = settings.model
    result = compare(pairs, min_days=gate.gate_min_days, alpha=gate.gate_alpha)
    evidence = {**result.as_dict(), "k": k, "days_from": str(first), "days_until": str(last)}
    if act and result.verdict == "promote":
        registry.promote(challenger)
        record_event(
            conn, "promoted", challenger, actor=actor, previous=champion, evidence=evidence
        )
        log.info("challenger %s promoted: %s", challenger, result.why)
    elif act and result.verdict == "keep":
        record_event(conn, "kept", champion, actor=actor, previous=challenger, evidence=evidence)
    return challenger, result


def rollback_if_below_floor(settings: Settings, conn: psycopg.Connection[Any]) -> str | None:
    """Return to the previous champion when the current one's mean CP@k over the last
    ``model.rollback_days`` measured days is below ``model.rollback_floor``; the version
    rolled back to, or None. Off while the floor is unset."""
    floor = settings.model.rollback_floor
    if floor is None:
        return None
    registry = Registry(settings.models_dir)
    champion, previous = registry.current(), registry.previous_champion()
    if champion is None or previous is None:
        return None
    rows = conn.execute(
        "SELECT day, card_precision_at_k FROM quality_daily "
        "WHERE model_version = %s AND role = 'champion' AND card_precision_at_k IS NOT NULL "
        "ORDER BY day DESC LIMIT %s",
        (champion, settings.model.rollback_days),
    ).fetchall()
    if len(rows) < settings.model.rollback_days:
        return None  # not enough matured days of this champion to judge it
    live = sum(float(row[1]) for row in rows) / len(rows)
    if live >= floor:
        return None
    failed_before = conn.execute(
        "SELECT 1 FROM model_events WHERE action = 'rolled_back' AND previous = %s LIMIT 1",
        (previous,),
    ).fetchone()
    if failed_before:  # no ping-pong between two models under the floor: a person decides
        log.warning("model %s is below its floor, and so was %s: not rolled back", champion,
                    previous)  # fmt: skip
        return None
    registry.promote(previous)
    evidence = {
        "cp_at_k": round(live, 4), "floor": floor, "days": [str(row[0]) for row in rows],
    }  # fmt: skip
    record_event(conn, "rolled_back", previous, actor="rollback", previous=champion,
                 evidence=evidence)  # fmt: skip
    log.warning("model %s below its floor (CP@k %.3f < %.3f): back to %s", champion, live,
                floor, previous)  # fmt: skip
    return previous


@dataclass(frozen=True)
class Retrained:
    version: str
    metadata: dict[str, Any]


def retrain(
    settings: Settings, clock: Clock, progress: Callable[[str], None] = lambda _m: None
) -> Retrained:
    """Train a challenger on the stored transactions whose labels have matured (analysts'
    verdicts and chargebacks alike, as the labels table holds them), with the same protocol
    as ``train``, its latest test fold ending on the last matured day; it becomes the
    challenger, scored in shadow until the gate or a person decides."""
    from fraudstream.features import history_features
    from fraudstream.model.data import selective_label_weights, training_data_from_db
    from fraudstream.model.protocol import Protocol
    from fraudstream.model.train import train
    from fraudstream.store.db import connect

    progress("reading stored transactions and labels")
    data = training_data_from_db(settings)
    if data.frame.empty:
        raise ValueError("no stored transactions to learn from")
    newest = data.frame["event_time"].max().normalize()
    matured_until = newest - timedelta(days=settings.engine.quality_maturity_days)
    protocol = Protocol.ending(matured_until - timedelta(days=1))
    needed = protocol.first_day()
    first = data.frame["event_time"].min().normalize()
    if first > needed:
        have = (matured_until - first).days
        raise ValueError(
            f"retraining needs matured history from {needed:%Y-%m-%d} "
            f"({(matured_until - needed).days} days); the database has {have} matured "
            f"day(s) from {first:%Y-%m-%d}"
        )
    features = data.features
    if features is None:
        progress("computing features")
        features = history_features(data.frame, data.frauds, counted=data.counted)
    result = train(
        data.frame, features, backend_name=settings.model.backend, protocol=protocol,
        k=settings.model.review_cards_per_day,
        cards_per_day=settings.model.review_cards_per_day,
        decline_precision=settings.model.decline_precision, seed=settings.model.seed,
        created_at=clock.now(), source="database (matured labels)", progress=progress,
        weights=selective_label_weights(data.frame, settings.policy.explore_share),
        newcomers=settings.model.newcomer_share,
    )  # fmt: skip
    registry = Registry(settings.models_dir)
    version = registry.save(result.model, result.metadata)
    champion = registry.current()
    if champion is None:
        registry.promote(version)
    elif version != champion:
        registry.set_challenger(version)
    with connect(settings) as conn:
        record_event(
            conn, "promoted" if champion is None else "challenger", version, actor="retrain",
            previous=champion, evidence={"test": result.metadata["metrics"]["test"]},
        )  # fmt: skip
    return Retrained(version, result.metadata)
