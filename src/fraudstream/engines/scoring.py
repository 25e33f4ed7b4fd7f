"""A featured batch → the rows the sink stores: score, decision, reasons. Pure: no I/O.

A row whose scoring or explanation fails is taken out of the batch with the error as its
reason (the caller dead-letters it); the rest of the batch goes on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from fraudstream.engines.columns import RecordColumns, micros, objects, row_views, utc_micros
from fraudstream.features import FEATURE_NAMES
from fraudstream.model.scoring import Scorer
from fraudstream.policy import RuleSet, decide
from fraudstream.records import PREDICTION_COLUMNS
from fraudstream.store.projections import (
    Observed,
    ShadowRuleDecisions,
    ShadowScores,
    TerminalPlaces,
)

__all__ = ["Scored", "empty_predictions", "observed", "predictions_of"]

log = logging.getLogger("fraudstream.engine")


@dataclass(frozen=True)
class Scored:
    """A batch's predictions (``PREDICTION_COLUMNS``, one per row kept) and the rows that
    could not be scored: (position in the batch, reason)."""

    predictions: pd.DataFrame
    failed: list[tuple[int, str]]
    kept: np.ndarray  # positions in the batch of the predictions' rows


def empty_predictions() -> pd.DataFrame:
    """A batch with nothing valid still commits its offsets and dead letters."""
    return pd.DataFrame({name: [] for name in PREDICTION_COLUMNS})


def _per_row(
    call: object, features: pd.DataFrame, what: str
) -> tuple[list[object], dict[int, str]]:
    """``call`` on each row alone, after it failed on the whole batch: the results, and the
    rows that fail by themselves with why."""
    results: list[object] = []
    failed: dict[int, str] = {}
    for row in range(len(features)):
        try:
            results.append(call(features.iloc[row : row + 1])[0])  # type: ignore[operator]
        except Exception as error:  # a row-level failure of the model library
            failed[row] = f"{what} failed: {type(error).__name__}: {error}"
            results.append(None)
    return results, failed


def _in_order(features: pd.DataFrame) -> pd.DataFrame:
    """``features`` with the columns of ``FEATURE_NAMES`` in that order."""
    if tuple(features.columns) == FEATURE_NAMES:
        return features
    return features[list(FEATURE_NAMES)]


_TERMINAL_PLACES = ("terminal_x", "terminal_y", "terminal_lat", "terminal_lon")


def predictions_of(
    batch: RecordColumns,
    features: pd.DataFrame,
    scorer: Scorer,
    rules: RuleSet,
    scored_at: datetime,
    *,
    engine: str,
    scores: np.ndarray | None = None,
) -> Scored:
    """Score, decide and explain a batch (``features``: its rows, ``FEATURE_NAMES``).

    ``scores`` are ``scorer``'s when already computed elsewhere (Spark's executors)."""
    failed: dict[int, str] = {}
    if scores is None:
        try:
            scores = scorer.score(features)
        except Exception:
            log.warning("scoring failed on a batch of %d; scoring row by row", len(features))
            values, failed = _per_row(scorer.score, features, "scoring")
            scores = np.array([np.nan if v is None else v for v in values], dtype=float)
    kept = np.delete(np.arange(len(batch), dtype=np.int64), sorted(failed))
    if len(failed):
        batch, features, scores = batch.take(kept), features.iloc[kept], scores[kept]
    decisions = decide(scores, features, batch.texts, scorer.thresholds, rules, tx_ids=batch.tx_id)
    reasons: list[list[dict[str, object]]] = [[] for _ in range(len(batch))]
    flagged = np.flatnonzero(decisions.decision != "approve")
    unexplained: dict[int, str] = {}
    if len(flagged):
        try:
            explained: list[object] = list(scorer.explain(features.iloc[flagged]))
        except Exception:
            log.warning("explaining failed on %d rows; explaining row by row", len(flagged))
            explained, by_row = _per_row(scorer.explain, features.iloc[flagged], "explanation")
            unexplained = {int(flagged[row]): reason for row, reason in by_row.items()}
        for row, row_reasons in zip(flagged, explained, strict=True):
            if row_reasons is not None:
                reasons[row] = [reason.as_dict() for reason in row_reasons]  # type: ignore[attr-defined]
    # One constructor, every column an array of its length already (a scalar or a list
    # costs pandas a conversion): this runs on every batch, and pandas costs per call.
    n = len(batch)
    predictions = pd.DataFrame(
        {
            "tx_id": batch.tx_id,
            "event_time": utc_micros(batch.event_us),
            "card_id": batch.card_id,
            "terminal_id": batch.terminal_id,
            "amount": batch.amount.round(2),
            "score": scores,
            "decision": decisions.decision,
            "rule_hits": objects(decisions.rule_hits),
            "reasons": objects(reasons),
            "model_version": np.full(n, scorer.version, dtype=object),
            "engine": np.full(n, engine, dtype=object),
            "kafka_partition": batch.kafka_partition,
            "kafka_offset": batch.kafka_offset,
            "kafka_time": utc_micros(batch.kafka_time_us),
            "scored_at": utc_micros(np.full(n, micros(scored_at), dtype=np.int64)),
            "content_hash": batch.content_hash,
            "features": row_views(_in_order(features).to_numpy(dtype=float)),
            "rules_version": np.full(n, decisions.rules_version, dtype=object),
            "late": batch.late,
        },
        index=pd.RangeIndex(n),
    )
    if unexplained:
        drop = np.array(sorted(unexplained))
        predictions = predictions.drop(index=drop).reset_index(drop=True)
        failed |= {int(kept[row]): reason for row, reason in unexplained.items()}
        kept = np.delete(kept, drop)
    assert tuple(predictions.columns) == PREDICTION_COLUMNS
    return Scored(predictions=predictions, failed=sorted(failed.items()), kept=kept)


def observed(
    batch: RecordColumns,
    features: pd.DataFrame,
    scorer: Scorer,
    engine: str,
    challenger: Scorer | None = None,
    rules: RuleSet | None = None,
    *,
    shadow_rules: RuleSet | None = None,
    scores: np.ndarray | None = None,
) -> Observed:
    """What the sink keeps besides predictions: the batch's terminals with their
    coordinates, its feature values counted into the model's training bins, and, when a
    ``challenger`` is being tried, its scores of the same rows and what it would have decided
    (shadow: stored, never acted on)."""
    ids = batch.terminal_id
    _unique, first = np.unique(ids, return_index=True)
    first.sort()  # each terminal's first row, in batch order (as ``drop_duplicates`` keeps)
    terminals = TerminalPlaces(
        ids[first], *(batch.column(name)[first] for name in _TERMINAL_PLACES)
    )
    profile = scorer.profile
    return Observed(
        terminals=terminals,
        engine=engine,
        model_version=scorer.version,
        profile=None if profile is None else profile.as_dict(),
        feature_counts=None if profile is None else profile.counts(features),
        shadow=None if challenger is None else _shadow(batch, features, challenger, rules),
        shadow_rules=None
        if shadow_rules is None or scores is None
        else _shadow_rules(batch, features, scores, scorer, shadow_rules),
    )


def _shadow_rules(
    batch: RecordColumns, features: pd.DataFrame, scores: np.ndarray, scorer: Scorer,
    rules: RuleSet,
) -> ShadowRuleDecisions | None:  # fmt: skip
    """What the shadow rules would have decided with the champion's scores; None (and a
    warning) when they cannot: a shadow never stops the live decisions."""
    try:
        decisions = decide(
            scores, features, batch.texts, scorer.thresholds, rules, tx_ids=batch.tx_id
        )
    except Exception as error:
        log.warning("shadow rules %s could not decide a batch: %s", rules.version, error)
        return None
    return ShadowRuleDecisions(
        rules_version=rules.version,
        tx_ids=batch.tx_id,
        event_times=batch["event_time"],
        decisions=np.asarray(decisions.decision),
        rule_hits=decisions.rule_hits,
    )


def _shadow(
    batch: RecordColumns, features: pd.DataFrame, challenger: Scorer, rules: RuleSet | None
) -> ShadowScores | None:
    """The challenger's scores and decisions; None (and a warning) when it cannot score: a
    shadow never stops the champion's batch."""
    try:
        scores = np.clip(challenger.score(features), 0.0, 1.0)
        decisions = decide(
            scores, features, batch.texts, challenger.thresholds,
            rules or RuleSet(version="model only"), tx_ids=batch.tx_id,
        )  # fmt: skip
    except Exception as error:  # the champion's decisions stand; the shadow has a gap
        log.warning("challenger %s could not score a batch: %s", challenger.version, error)
        return None
    return ShadowScores(
        model_version=challenger.version,
        tx_ids=batch.tx_id,
        event_times=batch["event_time"],
        scores=scores,
        decisions=np.asarray(decisions.decision),
    )
