"""One contract, every runtime: on a 32-day labelled stream with hostile messages inside it,
every feature column equals the offline training features bit for bit, scores and decisions
equal the reference, every hostile message is quarantined with its reason and nothing else
is lost or stuck, alerts are exactly the flagged stored rows — uninterrupted, with other batch
cuts, after repeated kill -9, with two engines sharing the partitions, and across a broker or
a database restart (Spark: a broker outage longer than its Kafka calls retry).

Each run appends a line to ``contract-results.json`` under pytest's base temp directory: the
runtime × case table of the issue's note.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fraudstream.config import Settings
from fraudstream.features import FEATURE_NAMES

from .conftest import Stream
from .runtimes import (
    Outcome,
    run_api,
    run_local,
    run_local_killed,
    run_local_restarted,
    run_memory,
    run_spark,
    run_spark_broker_down,
    run_two_engines,
)

Runner = Callable[[Stream, Settings, Path, Path], Outcome]

RUNTIMES: dict[str, Runner] = {
    "memory (random cuts, aborts, rebalances)": lambda s, st, m, _log: run_memory(s, st, m, seed=1),
    "memory (other cuts, aborts, rebalances)": lambda s, st, m, _log: run_memory(s, st, m, seed=2),
    "local (batches of 700)": lambda s, st, m, _log: run_local(s, st, m, batch=700, snapshot_s=0.5),
    "local (batches of 5,000)": lambda s, st, m, _log: run_local(
        s, st, m, batch=5000, snapshot_s=30
    ),
    "local (kill -9 three times, its disk lost once)": lambda s, st, m, log: run_local_killed(
        s, st, m, log, kills=3, disk_lost_at=2
    ),
    "local (two engines, one killed)": run_two_engines,
    "local (the broker restarted under it)": lambda s, st, m, log: run_local_restarted(
        s, st, m, log, service="broker"
    ),
    "local (the database restarted under it)": lambda s, st, m, log: run_local_restarted(
        s, st, m, log, service="database"
    ),
    "local + decision API (one card in twenty through POST /v1/decisions)": run_api,
    "spark (local[2], 4,000 offsets per micro-batch)": lambda s, st, m, log: run_spark(
        s, st, m, log.parent
    ),
    "spark (the broker down under it until the query gives up)": lambda s, st, m, log: (
        run_spark_broker_down(s, st, m, log.parent)
    ),
}

_SEEN: dict[str, pd.DataFrame] = {}


def _differences(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Cells that differ, NaN equal to NaN, compared bit for bit otherwise."""
    both_nan = np.isnan(got) & np.isnan(want)
    return (got != want) & ~both_nan


def check(outcome: Outcome, stream: Stream) -> dict[str, object]:
    """Assert the contract; return the figures of the note's table."""
    expected = stream.expected
    rows = outcome.rows
    assert rows.index.is_unique
    missing = set(expected.index) - set(rows.index)
    extra = set(rows.index) - set(expected.index) - {stream.late_tx_id}
    assert not missing and not extra, (len(missing), sorted(extra)[:5])

    got = rows.loc[expected.index]
    differing = _differences(
        got[list(FEATURE_NAMES)].to_numpy(dtype=float),
        expected[list(FEATURE_NAMES)].to_numpy(dtype=float),
    )
    by_feature = {
        name: int(n) for name, n in zip(FEATURE_NAMES, differing.sum(axis=0), strict=True) if n
    }
    assert not by_feature, f"feature cells differing from training: {by_feature}"
    assert (got["score"].to_numpy() == expected["score"].to_numpy()).all()
    assert (got["decision"].to_numpy() == expected["decision"].to_numpy()).all()
    assert not got["late"].astype(bool).any()
    assert bool(rows.loc[stream.late_tx_id, "late"])  # stored, flagged, not counted

    for hostile in stream.hostile:
        if hostile.reason is None:
            continue
        matching = [
            r for kind, r in outcome.dead_letters if kind == hostile.topic and hostile.reason in r
        ]
        assert len(matching) == 1, (hostile.name, hostile.reason, outcome.dead_letters)
    quarantined = len([h for h in stream.hostile if h.reason])
    assert len(outcome.dead_letters) == quarantined, outcome.dead_letters

    flagged = set(rows.index[rows["decision"] != "approve"])
    assert outcome.alerts == flagged, (len(outcome.alerts - flagged), len(flagged - outcome.alerts))
    cells = got[list(FEATURE_NAMES)].size
    return {
        "rows": len(rows),
        "feature cells equal": f"{cells - int(differing.sum()):,} of {cells:,}",
        "dead letters": len(outcome.dead_letters),
        "alerts": len(outcome.alerts),
        "interruptions survived": outcome.crashes,
    }


@pytest.mark.timeout(900)
@pytest.mark.parametrize("runtime", list(RUNTIMES))
def test_the_runtime_honours_the_contract(
    runtime: str,
    stream: Stream,
    stack_settings: Settings,
    models_dir: Path,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    outcome = RUNTIMES[runtime](stream, stack_settings, models_dir, tmp_path / "engine.log")
    figures = check(outcome, stream)
    # Every runtime's rows are identical to every other's (not only to the reference).
    for other, rows in _SEEN.items():
        pd.testing.assert_frame_equal(
            outcome.rows, rows, check_exact=True, obj=f"{runtime} vs {other}"
        )
    _SEEN[runtime] = outcome.rows
    results = tmp_path_factory.getbasetemp() / "contract-results.json"
    with results.open("a") as out:
        out.write(json.dumps({"runtime": runtime, **figures}) + "\n")


@pytest.fixture(scope="module")
def shadowed(
    stream: Stream,
    stack_settings: Settings,
    models_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Outcome, str, str]:
    """The local engine on the stream with a challenger in shadow: its outcome, the champion
    and the challenger (another model, trained on 160 days before the stream)."""
    import shutil

    from fraudstream.features import history_features
    from fraudstream.model.data import from_dataset
    from fraudstream.model.registry import Registry
    from fraudstream.model.train import train
    from fraudstream.simulator.adapters import load_dataset
    from fraudstream.simulator.generator import generate_blocks, preset
    from fraudstream.simulator.history import write_history

    from .runtimes import run_local

    root = tmp_path_factory.mktemp("shadowed")
    models = root / "models"
    shutil.copytree(models_dir, models)
    registry = Registry(models)
    start = preset("handbook").start - timedelta(days=170)
    params = preset("handbook", n_customers=400, n_terminals=800, days=160, seed=23, start=start)
    path = root / "before.parquet"
    write_history(generate_blocks(params), path, params)
    frame, frauds = from_dataset(load_dataset(path, tokenizer=None))
    result = train(
        frame, history_features(frame, frauds), backend_name="xgboost",
        grid=[{"n_estimators": 40, "max_depth": 3}],
        created_at=datetime(2026, 1, 3, tzinfo=timezone.utc), source="challenger",
    )  # fmt: skip
    challenger = registry.save(result.model, result.metadata)
    champion = registry.current()
    assert champion is not None and challenger != champion
    registry.set_challenger(challenger)
    outcome = run_local(stream, stack_settings, models, batch=2000, snapshot_s=5)
    return outcome, champion, challenger


def test_a_challenger_in_shadow_changes_no_decision_and_scores_every_row(
    shadowed: tuple[Outcome, str, str], stream: Stream, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The champion's rows are the contract's, bit for bit; the challenger scored each stored
    row once, exactly as it scores the stored feature vector; matured days are measured for
    both on the same days; the gate judges on those days and says why; a champion below the
    floor is rolled back; every change is in model_events."""
    import psycopg

    from fraudstream.model.lifecycle import rollback_if_below_floor, run_gate
    from fraudstream.model.registry import Registry
    from fraudstream.model.scoring import Scorer
    from fraudstream.store.db import conninfo
    from fraudstream.store.quality import refresh_quality

    outcome, champion, challenger = shadowed
    check(outcome, stream)
    settings = outcome.settings
    assert settings is not None
    registry = Registry(settings.models_dir)
    with psycopg.connect(conninfo(settings)) as conn:
        shadow = dict(
            conn.execute(
                "SELECT tx_id, score FROM shadow_predictions WHERE model_version = %s",
                (challenger,),
            ).fetchall()
        )
        assert conn.execute(
            "SELECT count(DISTINCT model_version) FROM shadow_predictions"
        ).fetchone() == (1,)
        assert set(shadow) == set(outcome.rows.index)
        rows = outcome.rows.loc[stream.expected.index]
        want = Scorer(registry.load(challenger)).score(rows[list(FEATURE_NAMES)])
        got = np.array([shadow[tx] for tx in rows.index])
        assert (got == want).all()
        assert not (got == rows["score"].to_numpy()).all()  # another model indeed

        newest = conn.execute("SELECT max(event_time) FROM fraud_predictions").fetchone()[0]
        measured = refresh_quality(conn, newest.date(), maturity_days=7)
        assert len(measured) >= 20
        roles = dict(
            conn.execute("SELECT role, count(*) FROM quality_daily GROUP BY role").fetchall()
        )
        assert roles["champion"] == roles["shadow"] == len(measured)

        gated = settings.model_copy(
            update={"model": settings.model.model_copy(update={"gate_min_days": 5})}
        )
        outcome_of_gate = run_gate(gated, conn)
        assert outcome_of_gate is not None
        _version, verdict = outcome_of_gate
        assert verdict.verdict in ("promote", "keep") and verdict.days >= 20, verdict
        results = tmp_path_factory.getbasetemp() / "contract-results.json"
        with results.open("a") as out:  # the gate's figures, for the note's table
            out.write(json.dumps({"runtime": "shadow gate", **verdict.as_dict()}) + "\n")
        event = conn.execute(
            "SELECT action, version, actor, evidence FROM model_events ORDER BY id DESC"
        ).fetchone()
        assert event is not None and event[2] == "gate" and event[3]["days"] == verdict.days
        if verdict.verdict == "promote":
            assert registry.current() == challenger and event[:2] == ("promoted", challenger)
        else:
            assert registry.current() == champion and event[:2] == ("kept", champion)

        # The champion of the stream falls below an impossible floor: back to the one before.
        registry.promote(challenger if registry.current() == champion else champion)
        registry.promote(champion)
        floored = settings.model_copy(
            update={"model": settings.model.model_copy(
                update={"rollback_floor": 1.0, "rollback_days": 5}
            )}
        )  # fmt: skip
        assert rollback_if_below_floor(floored, conn) == challenger
        assert registry.current() == challenger
        last = conn.execute(
            "SELECT action, version, previous, actor FROM model_events ORDER BY id DESC"
        ).fetchone()
        assert last == ("rolled_back", challenger, champion, "rollback")


def test_the_model_lifecycle_commands(shadowed: tuple[Outcome, str, str]) -> None:
    """`models challenge`, `models gate --dry-run`, `quality`, `retrain` (refused: the stream
    is shorter than the protocol) and `models promote --by`, on the shadowed run's database;
    each change in model_events with who made it."""
    import psycopg

    from fraudstream.model.registry import Registry
    from fraudstream.store.db import conninfo

    from ..conftest import run_cli
    from ..engine_kit import engine_env

    outcome, champion, challenger = shadowed
    assert outcome.settings is not None
    env = engine_env(outcome.settings)
    registry = Registry(outcome.settings.models_dir)
    other = challenger if registry.current() == champion else champion

    tried = run_cli("models", "challenge", other, "--by", "ana", env=env)
    assert tried.returncode == 0 and f"{other} is scored in shadow" in tried.stdout, tried.stderr
    gated = run_cli("models", "gate", "--dry-run", env=env)
    assert gated.returncode == 0, gated.stderr
    assert "matured day(s)" in gated.stdout and "[dry run]" in gated.stdout
    assert "money recall@k" in gated.stdout and registry.challenger() == other
    measured = run_cli("quality", env=env)
    assert measured.returncode == 0 and "measured" in measured.stdout, measured.stderr
    refused = run_cli("retrain", env=env)
    assert refused.returncode == 1 and "retraining needs matured history" in refused.stderr
    stopped = run_cli("models", "challenge", "--stop", "--by", "ana", env=env)
    assert stopped.returncode == 0 and f"{other} retired" in stopped.stdout
    promoted = run_cli("models", "promote", other, "--by", "bea", env=env)
    assert promoted.returncode == 0 and registry.current() == other
    with psycopg.connect(conninfo(outcome.settings)) as conn:
        events = conn.execute(
            "SELECT action, version, actor FROM model_events WHERE actor IN ('ana', 'bea') "
            "ORDER BY id"
        ).fetchall()
    assert events == [("challenger", other, "ana"), ("retired", other, "ana"),
                      ("promoted", other, "bea")]  # fmt: skip


def test_training_from_the_database_learns_from_the_features_the_engine_used(
    shadowed: tuple[Outcome, str, str], stream: Stream
) -> None:
    """``fraudstream train --from-db`` takes the stored feature vectors (no skew possible),
    and they are the training features of the same history; the late record is kept out of
    terminal activity."""
    from fraudstream.model.data import training_data_from_db

    outcome = shadowed[0]
    assert outcome.settings is not None
    data = training_data_from_db(outcome.settings)
    assert data.features is not None and data.counted is not None
    features = data.features.set_axis(data.frame["tx_id"].to_numpy())
    got = features.loc[stream.expected.index].to_numpy(dtype=float)
    want = stream.expected[list(FEATURE_NAMES)].to_numpy(dtype=float)
    assert not _differences(got, want).any()
    late = data.frame["tx_id"].to_numpy() == stream.late_tx_id
    assert late.sum() == 1 and not data.counted[late].any() and data.counted[~late].all()


def test_the_stream_is_the_hard_case(stream: Stream) -> None:
    """Many days, labels days late, several partitions, every terminal feature far from 0."""
    expected = stream.expected
    assert len(stream.logs) == 4 and all(len(log) > 1000 for log in stream.logs.values())
    assert stream.labels > 100
    for name in FEATURE_NAMES:
        if name.startswith("terminal_"):
            assert (expected[name] != 0).sum() > 100, name
