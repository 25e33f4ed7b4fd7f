"""`fraudstream init` and `fraudstream health` against external services, as the Docker
Compose `init` service and the containers' health checks use them."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from fraudstream import bus
from fraudstream.config import Settings, load_settings
from fraudstream.stack.health import probe
from fraudstream.stack.postgres import EmbeddedPostgres
from fraudstream.store import migrations
from fraudstream.store.db import connect, conninfo
from fraudstream.store.roles import API_ROLE, DASHBOARD_ROLE

from ..conftest import overrides_env, run_cli


def _external(stack_settings: Settings, tmp_path: Path) -> dict[str, str]:
    """The session's broker and server as external services, with this test's own topics,
    database, engine name and a model registry that already has a current model."""
    run = uuid.uuid4().hex[:8]
    with connect(stack_settings, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(f"db_{run}")))
    url = make_conninfo(conninfo(stack_settings), dbname=f"db_{run}")
    # The roles are the server's: keep the passwords the session's other tests use.
    dashboard_password = EmbeddedPostgres(stack_settings).dashboard_password()
    api_password = EmbeddedPostgres(stack_settings).api_password()
    models = tmp_path / "models"
    models.mkdir()
    (models / "CURRENT").write_text("m-already-there\n")  # init trains only when none is
    return {
        "state_dir": str(tmp_path / "state"),
        "kafka.bootstrap_servers": stack_settings.kafka.bootstrap,
        "database.url": url,
        "dashboard.database_url": make_conninfo(
            url, user=DASHBOARD_ROLE, password=dashboard_password
        ),
        "api.database_url": make_conninfo(url, user=API_ROLE, password=api_password),
        "model.dir": str(models),
        "engine.engine_id": f"engine-{run}",
        **{f"kafka.topics.{name}": f"{name}-{run}" for name in ("transactions", "labels")},
        **{f"kafka.topics.{name}": f"{name}-{run}" for name in ("alerts", "dlq")},
    }


def test_init_prepares_external_services_once(stack_settings: Settings, tmp_path: Path) -> None:
    overrides = _external(stack_settings, tmp_path)
    env = overrides_env(overrides)
    settings = load_settings(overrides=overrides)
    try:
        first = run_cli("init", env=env)
        assert first.returncode == 0, first.stderr
        assert f"created {settings.kafka.topics.transactions}" in first.stdout
        assert "database schema migrated to version" in first.stdout
        assert "dashboard database user: ready" in first.stdout
        assert "API database user: ready" in first.stdout
        assert "model: one is current" in first.stdout
        assert "password" not in first.stdout + first.stderr

        again = run_cli("init", env=env)
        assert again.returncode == 0, again.stderr
        assert "topics: all exist" in again.stdout and "schema: current" in again.stdout

        # The dashboard's user logs in with the URL's password and may only read predictions.
        assert settings.dashboard.database_url is not None
        with psycopg.connect(settings.dashboard.database_url.get_secret_value()) as conn:
            conn.execute("SELECT count(*) FROM fraud_predictions")
            privileges = conn.execute(
                "SELECT has_table_privilege('fraud_predictions', 'INSERT')"
            ).fetchone()
        assert privileges == (False,)
        # The API's user reads decisions and keys, and may only add degraded answers.
        assert settings.api.database_url is not None
        with psycopg.connect(settings.api.database_url.get_secret_value()) as conn:
            privileges = conn.execute(
                "SELECT has_table_privilege('fraud_predictions', 'SELECT'), "
                "has_table_privilege('api_keys', 'SELECT'), "
                "has_table_privilege('degraded_decisions', 'INSERT'), "
                "has_table_privilege('fraud_predictions', 'INSERT'), "
                "has_table_privilege('api_keys', 'UPDATE'), "
                "has_table_privilege('labels', 'SELECT')"
            ).fetchone()
        assert privileges == (True, True, True, False, False, False)
    finally:
        bus.admin_client(settings.kafka).delete_topics(settings.kafka.topics.all())


def test_health_of_broker_database_and_engine(stack_settings: Settings, tmp_path: Path) -> None:
    overrides = _external(stack_settings, tmp_path)
    settings = load_settings(overrides=overrides)
    with connect(settings) as conn:
        migrations.migrate(conn)
    for service in ("kafka", "postgres"):
        result = run_cli("health", service, env=overrides_env(overrides))
        assert result.returncode == 0, result.stderr

    engine_id = overrides["engine.engine_id"]
    silent = run_cli("health", "engine", env=overrides_env(overrides))
    assert silent.returncode == 1 and f"no status from engine {engine_id} yet" in silent.stderr

    def heartbeat(engine: str, age_s: float) -> None:
        with connect(settings) as conn:
            conn.execute(
                "INSERT INTO engine_status (engine_id, engine, consumer_group, started_at, "
                "heartbeat_at) VALUES (%s, 'local', 'g', now(), now() - make_interval(secs => %s)) "
                "ON CONFLICT (engine_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                (engine, age_s),
            )
            conn.commit()

    heartbeat(engine_id, 2)
    assert probe(settings, "engine").ok
    heartbeat(engine_id, 45)
    stale = probe(settings, "engine")
    assert not stale.ok and "last reported 45 s ago" in stale.detail
    assert probe(settings, "engine", max_age_s=60).ok

    # Without engine.engine_id: any engine of this host (engines name themselves host-pid).
    unnamed = settings.model_copy(
        update={"engine": settings.engine.model_copy(update={"engine_id": None})}
    )
    heartbeat(f"{socket.gethostname()}-4242", 1)
    assert probe(unnamed, "engine").ok

    down = load_settings(overrides={**overrides, "database.url": "postgresql://x@127.0.0.1:1/x"})
    assert not probe(down, "postgres").ok and not probe(down, "engine").ok
