"""Helpers shared by the engine tests (integration and contract): a private database,
consumer group and topics per test on the session's broker and server, publishing, reading
back what was stored, and engine processes started, awaited and stopped like a service."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import psycopg
from psycopg import sql

from fraudstream import bus
from fraudstream.config import Settings, TopicSettings
from fraudstream.simulator.publish import Publisher, TransactionRows
from fraudstream.stack.postgres import EmbeddedPostgres
from fraudstream.store import migrations
from fraudstream.store.db import connect, conninfo
from fraudstream.store.roles import ensure_engine_role

from .conftest import free_port, overrides_env

METRIC_SERVICES = ("engine", "api", "simulator", "dashboard")


def isolated(stack_settings: Settings, models: Path, **engine: object) -> Settings:
    """The session's broker and server with this test's own topics, database and group."""
    run = uuid.uuid4().hex[:8]
    topics = TopicSettings(
        transactions=f"tx-{run}",
        labels=f"lb-{run}",
        alerts=f"al-{run}",
        dlq=f"dlq-{run}",
        labels_dlq=f"lbdlq-{run}",
        decisions=f"dec-{run}",
    )
    kafka = stack_settings.kafka.model_copy(update={"topics": topics})
    bus.ensure_topics(kafka)
    with connect(stack_settings, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(f"db_{run}")))
    database = stack_settings.database.model_copy(update={"name": f"db_{run}"})
    engine_settings = stack_settings.engine.model_copy(
        update={"group_id": f"g-{run}", "status_interval_s": 0.5, **engine}
    )
    metrics = stack_settings.metrics.model_copy(
        update={f"{service}_port": free_port() for service in METRIC_SERVICES}
    )
    settings = stack_settings.model_copy(
        update={
            "kafka": kafka,
            "database": database,
            "engine": engine_settings,
            "model": stack_settings.model.model_copy(update={"dir": models}),
            "metrics": metrics,
        }
    )
    with connect(settings) as conn:
        migrations.migrate(conn)
        # The engines' user's rights are per database (the role is the server's).
        ensure_engine_role(conn, EmbeddedPostgres(settings).engine_password())
    return settings


def publish(settings: Settings, frame: pd.DataFrame) -> None:
    publisher = Publisher(settings.kafka)
    rows = TransactionRows(frame)
    for index in range(len(rows)):
        publisher.send_transaction(rows.record(index))
    publisher.close()


def predictions(settings: Settings) -> pd.DataFrame:
    with psycopg.connect(conninfo(settings)) as conn:
        rows = conn.execute(
            "SELECT tx_id, score, decision, model_version FROM fraud_predictions"
        ).fetchall()
    return (
        pd.DataFrame(rows, columns=["tx_id", "score", "decision", "model_version"])
        .set_index("tx_id")
        .sort_index()
    )


def engine_env(settings: Settings) -> dict[str, str]:
    return overrides_env(
        {
            "state_dir": str(settings.state_dir),
            "kafka.port": str(settings.kafka.port),
            "kafka.controller_port": str(settings.kafka.controller_port),
            "kafka.topics.transactions": settings.kafka.topics.transactions,
            "kafka.topics.labels": settings.kafka.topics.labels,
            "kafka.topics.alerts": settings.kafka.topics.alerts,
            "kafka.topics.dlq": settings.kafka.topics.dlq,
            "kafka.topics.labels_dlq": settings.kafka.topics.labels_dlq,
            "kafka.topics.decisions": settings.kafka.topics.decisions,
            "database.port": str(settings.database.port),
            "database.name": settings.database.name,
            "engine.group_id": settings.engine.group_id,
            "engine.batch_max_messages": str(settings.engine.batch_max_messages),
            "engine.snapshot_interval_s": str(settings.engine.snapshot_interval_s),
            "engine.status_interval_s": str(settings.engine.status_interval_s),
            "model.dir": str(settings.model.dir),
            "api.port": str(settings.api.port),
            "api.budget_ms": str(settings.api.budget_ms),
            "api.workers": str(settings.api.workers),
            **{
                f"metrics.{service}_port": str(settings.metrics.port_of(service))
                for service in METRIC_SERVICES
            },
        }
    )


def start_engine(settings: Settings, log: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "fraudstream", "score", *args],
        env=engine_env(settings),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def stored_count(settings: Settings) -> int:
    with psycopg.connect(conninfo(settings)) as conn:
        row = conn.execute("SELECT count(*) FROM fraud_predictions").fetchone()
    return int(row[0]) if row else 0


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)


def stop_engine(process: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM, as a service manager would; the engine must exit cleanly and soon."""
    process.send_signal(signal.SIGTERM)
    try:
        returncode = process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("the engine did not stop within 30 s of SIGTERM") from None
    assert returncode == 0, log.read_text()[-3000:]
