"""The `fraudstream` command as a user runs it: up, status, logs, down, errors."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, Producer
from pydantic import SecretStr

from fraudstream import bus
from fraudstream.config import Settings, env_name, load_settings
from fraudstream.stack.process import port_in_use
from fraudstream.store.db import connect, conninfo
from fraudstream.telemetry import scrape

from ..conftest import overrides_env, run_cli, stack_overrides
from ..engine_kit import engine_env, isolated


def _status(env: dict[str, str]) -> dict[str, dict[str, object]]:
    result = run_cli("status", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


def _ports(overrides: dict[str, str]) -> list[int]:
    return [int(overrides[k]) for k in ("kafka.port", "kafka.controller_port", "database.port")]


def _settings(overrides: dict[str, str]) -> Settings:
    return load_settings(overrides=overrides)


def _assert_private(state: Path) -> None:
    """Nothing in the state directory (Kafka's data and logs, PostgreSQL's, the passwords)
    can be read by another account; directories at most let it pass through (PostgreSQL's
    own account, when the stack runs as root)."""
    checked = 0
    for path in [state, *state.rglob("*")]:
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.lstat().st_mode)
        allowed = 0o011 if path.is_dir() else 0
        assert mode & 0o077 & ~allowed == 0, f"{path} is mode {mode:o}"
        checked += 1
    assert checked > 20 and (state / "kafka").is_dir() and (state / "logs").is_dir()


def test_lifecycle_up_status_down_and_data_survives(tmp_path: Path) -> None:
    overrides = stack_overrides(tmp_path / "state")
    env = overrides_env(overrides)
    settings = _settings(overrides)
    try:
        first = run_cli("up", env=env)
        assert first.returncode == 0, first.stderr
        assert "started kafka, postgres" in first.stdout
        assert "database schema migrated to version" in first.stdout

        status = _status(env)
        assert {name: row["state"] for name, row in status.items()} == {
            "kafka": "running",
            "postgres": "running",
        }
        assert status["kafka"]["address"] == f"127.0.0.1:{overrides['kafka.port']}"
        assert isinstance(status["postgres"]["pid"], int)
        assert isinstance(status["kafka"]["uptime_s"], float)
        _assert_private(tmp_path / "state")

        second = run_cli("up", env=env)
        assert second.returncode == 0, second.stderr
        assert "already running" in second.stdout and "nothing changed" in second.stdout
        assert {n: r["pid"] for n, r in _status(env).items()} == {
            n: r["pid"] for n, r in status.items()
        }

        marker = f"survivor-{uuid.uuid4().hex[:6]}"
        producer = Producer(settings.kafka.client_config())
        producer.produce(settings.kafka.topics.transactions, key="card-1", value=marker)
        assert producer.flush(30) == 0
        with psycopg.connect(conninfo(settings), autocommit=True) as conn:
            conn.execute(
                "INSERT INTO labels (tx_id, source, is_fraud, reported_at) "
                "VALUES (%s, 'analyst', true, now())",
                (marker,),
            )

        logs = run_cli("logs", "kafka", "-n", "5", env=env)
        assert logs.returncode == 0 and len(logs.stdout.splitlines()) == 5
        both = run_cli("logs", "-n", "2", env=env)
        assert "kafka | " in both.stdout and "postgres | " in both.stdout
        unknown = run_cli("logs", "zookeeper", env=env)
        assert unknown.returncode == 2 and "choose from kafka, postgres" in unknown.stderr

        down = run_cli("down", env=env)
        assert down.returncode == 0, down.stderr
        assert "stopped postgres, kafka" in down.stdout
        assert not any(port_in_use("127.0.0.1", port) for port in _ports(overrides))
        assert {r["state"] for r in _status(env).values()} == {"stopped"}

        again = run_cli("up", env=env)
        assert again.returncode == 0, again.stderr
        assert "created topics" not in again.stdout and "migrated" not in again.stdout
        with psycopg.connect(conninfo(settings)) as conn:
            stored = conn.execute("SELECT is_fraud FROM labels WHERE tx_id = %s", (marker,))
            assert stored.fetchone() == (True,)
        assert marker in _consume_all(settings, settings.kafka.topics.transactions)

        wipe = run_cli("down", "--volumes", env=env)
        assert wipe.returncode == 0, wipe.stderr
        assert not settings.state_dir.exists()
        assert not any(port_in_use("127.0.0.1", port) for port in _ports(overrides))
    finally:
        run_cli("down", "--volumes", env=env)


def _consume_all(settings: Settings, topic: str, timeout_s: float = 30.0) -> list[str]:
    """Every value in ``topic`` from the beginning (stops after a quiet second once data came)."""
    consumer = Consumer(
        {
            **settings.kafka.client_config(),
            "group.id": f"reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    values: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is None:
            if values:
                break
            continue
        if not message.error():
            values.append(message.value().decode())
    consumer.close()
    return values


def test_a_port_in_use_fails_before_anything_starts(tmp_path: Path) -> None:
    overrides = stack_overrides(tmp_path / "state")
    env = overrides_env(overrides)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(overrides["database.port"])))
        squatter.listen()
        result = run_cli("up", env=env)
    assert result.returncode == 1
    assert f"127.0.0.1:{overrides['database.port']} is already in use" in result.stderr
    assert "FRAUDSTREAM_DATABASE__PORT" in result.stderr
    assert not port_in_use("127.0.0.1", int(overrides["kafka.port"]))  # Kafka was not started
    assert {r["state"] for r in _status(env).values()} == {"stopped"}


def test_missing_java_is_explained(tmp_path: Path) -> None:
    overrides = stack_overrides(tmp_path / "state")
    env = {**overrides_env(overrides), "PATH": str(tmp_path / "empty-bin")}
    env.pop("JAVA_HOME", None)
    result = run_cli("up", env=env)
    assert result.returncode == 1
    assert "Java 17+ is needed to run Kafka" in result.stderr
    assert "apt-get install openjdk-17-jre-headless" in result.stderr
    doctor = run_cli("doctor", env=env)
    assert doctor.returncode == 1
    assert "✗ java" in doctor.stdout and "check(s) failed: java" in doctor.stderr


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("FRAUDSTREAM_KAFKA__PARTITIONS", "zero", "bad value for kafka.partitions"),
        ("FRAUDSTREAM_DATABASE__PORT", "70000", "less than or equal to 65535"),
        ("FRAUDSTREAM_KAFKA__PARTITON", "4", "did you mean 'kafka.partitions'"),
    ],
)
def test_a_bad_setting_fails_with_a_clear_message(
    tmp_path: Path, variable: str, value: str, expected: str
) -> None:
    env = {**overrides_env({"state_dir": str(tmp_path / "state")}), variable: value}
    result = run_cli("up", env=env)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists()


def test_a_bad_flag_value_fails_with_a_clear_message(tmp_path: Path) -> None:
    env = overrides_env({"state_dir": str(tmp_path / "state")})
    result = run_cli("--set", "kafka.port", "status", env=env)
    assert result.returncode == 2 and "expected KEY=VALUE" in result.stderr


@pytest.mark.parametrize(
    "secret", ["database.password", "database.url", "privacy.token_key", "kafka.sasl_password"]
)
def test_a_secret_on_the_command_line_is_refused_without_repeating_it(
    tmp_path: Path, secret: str
) -> None:
    env = overrides_env({"state_dir": str(tmp_path / "state")})
    result = run_cli("--set", f"{secret}=hunter2-secret", "status", env=env)
    assert result.returncode == 2
    variable = "FRAUDSTREAM_" + secret.upper().replace(".", "__")
    assert f"{secret} is a secret: give it in the environment" in " ".join(result.stderr.split())
    assert variable in result.stderr
    assert "hunter2-secret" not in result.stderr + result.stdout


def test_config_in_a_pipe_is_tab_separated_and_never_cut(tmp_path: Path) -> None:
    env = overrides_env({"state_dir": str(tmp_path / "state")})
    result = run_cli("config", env=env)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert "start_timeout_s\t90.0\tFRAUDSTREAM_START_TIMEOUT_S" in lines
    assert all(len(line.split("\t")) == 3 for line in lines) and "…" not in result.stdout


def test_a_dashboard_beyond_loopback_needs_a_user(tmp_path: Path) -> None:
    env = overrides_env({"state_dir": str(tmp_path / "state"), "dashboard.host": "0.0.0.0"})
    result = run_cli("dashboard", env=env)
    assert result.returncode == 2
    assert "dashboard.host is 0.0.0.0, not loopback, and there is no user" in result.stderr


def test_users_are_managed_by_command_with_hashed_passwords_and_audited(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = isolated(stack_settings, tmp_path / "models")
    env = engine_env(settings)
    password = "correct horse battery staple"
    created = run_cli(
        "users", "create", "bea", "--role", "supervisor", "--password-stdin", "--by", "root",
        env=env, stdin=password + "\n",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert "user 'bea' created (supervisor)" in created.stderr
    short = run_cli("users", "create", "cal", "--password-stdin", env=env, stdin="short\n")
    assert short.returncode == 2 and "at least 12 characters" in short.stderr
    empty = run_cli("users", "create", "cal", "--password-stdin", env=env, stdin="\n")
    assert empty.returncode == 2 and "an empty password is refused" in empty.stderr
    on_the_command_line = run_cli("users", "create", "cal", "--password", password, env=env)
    assert on_the_command_line.returncode == 2  # no such option: never in the process list
    assert run_cli("users", "set-role", "bea", "admin", "--by", "root", env=env).returncode == 0
    assert run_cli("users", "disable", "bea", "--by", "root", env=env).returncode == 0
    listed = run_cli("users", "list", env=env)
    assert "bea\tadmin" in listed.stdout and "disabled" in listed.stdout
    with connect(settings) as conn:
        stored = conn.execute("SELECT password_hash FROM app_users").fetchone()
        audit = conn.execute(
            "SELECT actor, action, object_id FROM audit_log ORDER BY id"
        ).fetchall()
    assert stored is not None and str(stored[0]).startswith("$argon2id$")
    assert password not in str(stored[0])
    assert audit == [
        ("root", "user.create", "bea"), ("root", "user.role", "bea"),
        ("root", "user.disable", "bea"),
    ]  # fmt: skip


def test_external_services_are_used_not_started(stack_settings: Settings, tmp_path: Path) -> None:
    env = overrides_env(
        {
            "state_dir": str(tmp_path / "state"),
            "pipeline": "false",
            "kafka.bootstrap_servers": stack_settings.kafka.bootstrap,
            "database.url": conninfo(stack_settings),
        }
    )
    result = run_cli("up", env=env)
    assert result.returncode == 0, result.stderr
    assert "nothing changed" in result.stdout
    assert {n: r["state"] for n, r in _status(env).items()} == {
        "kafka": "external",
        "postgres": "external",
    }
    assert "password" not in result.stdout + result.stderr
    assert os.listdir(tmp_path / "state") == [".fraudstream-state", "run"]


def test_up_runs_the_whole_pipeline_and_catches_fraud(tmp_path: Path) -> None:
    overrides = {
        **stack_overrides(tmp_path / "state"),
        "pipeline": "true",
        "model.bootstrap_customers": "300",
        "simulator.rate": "3000",
    }
    env = overrides_env(overrides)
    settings = load_settings(overrides=overrides)
    try:
        up = run_cli("up", env=env, timeout=600)
        assert up.returncode == 0, up.stderr
        assert "trained and promoted a first model" in up.stdout
        # Output to a pipe, as in CI: a plain line per step with the time since the start
        # (no spinner, no terminal codes), the first model's steps among them.
        steps = up.stderr.splitlines()
        for step in (
            r"starting kafka on 127\.0\.0\.1:\d+",
            r"first model, \d+ s: simulating \d+ days",
            r"first model, \d+ s: m-[0-9a-f]+ promoted",
            r"starting engine",
        ):
            assert any(re.fullmatch(rf" *\d+\.\d s  {step}.*", line) for line in steps), step
        assert "\x1b" not in up.stderr and "\r" not in up.stderr
        assert "create a key: fraudstream api-keys create NAME" in up.stdout
        states = {name: row["state"] for name, row in _status(env).items()}
        assert states == {
            n: "running" for n in ("kafka", "postgres", "engine", "api", "simulator", "dashboard")
        }
        deadline = time.monotonic() + 120
        counts: tuple[int, int] = (0, 0)
        while time.monotonic() < deadline:
            with psycopg.connect(conninfo(settings)) as conn:
                row = conn.execute(
                    "SELECT count(*), count(*) FILTER (WHERE decision <> 'approve') "
                    "FROM fraud_predictions"
                ).fetchone()
            counts = (int(row[0]), int(row[1])) if row else (0, 0)
            if counts[0] > 5_000 and counts[1] > 0:
                break
            time.sleep(2)
        assert counts[0] > 5_000 and counts[1] > 0, counts
        # Each service serves its metrics where `status` says; the engine's count what it
        # stored, the simulator's what it sends.
        status = _status(env)
        for name in ("engine", "api", "simulator", "dashboard"):
            port = overrides[f"metrics.{name}_port"]
            assert status[name]["metrics"] == f"http://127.0.0.1:{port}/metrics", name
        stored = scrape(str(status["engine"]["metrics"]))["fraudstream_engine_transactions_total"]
        assert stored > 0
        assert str(status["simulator"]["detail"]).startswith("sending ")
        for name in ("api", "dashboard"):  # no request, no page yet: they answer already
            assert "process_cpu_seconds_total" in scrape(str(status[name]["metrics"])), name
        logs = run_cli("logs", "engine", "-n", "20", env=env)
        assert "scored" in logs.stdout
        # The dashboard serves on its port (Streamlit's health endpoint answers).
        health = f"http://127.0.0.1:{settings.dashboard.port}/_stcore/health"
        with urllib.request.urlopen(health, timeout=30) as response:
            assert response.read() == b"ok"
        down = run_cli("down", env=env, timeout=180)
        assert down.returncode == 0, down.stderr
        assert "stopped dashboard, simulator, api, engine, postgres, kafka" in down.stdout
    finally:
        run_cli("down", "--volumes", env=env, timeout=180)


def test_the_managed_broker_requires_scram_when_asked_and_clients_use_it(tmp_path: Path) -> None:
    password = f"scram-{uuid.uuid4().hex}"
    overrides = {
        **stack_overrides(tmp_path / "state"),
        "kafka.security_protocol": "SASL_PLAINTEXT",
        "kafka.sasl_mechanism": "SCRAM-SHA-512",
        "kafka.sasl_username": "fraudstream",
    }
    env = {**overrides_env(overrides), env_name("kafka.sasl_password"): password}
    settings = load_settings(overrides={**overrides, "kafka.sasl_password": password})
    try:
        up = run_cli("up", env=env, timeout=300)
        assert up.returncode == 0, up.stderr  # topics created: the CLI authenticated
        producer = Producer(settings.kafka.client_config())
        producer.produce(settings.kafka.topics.transactions, key="k", value="v")
        assert producer.flush(30) == 0
        # Without credentials, or with the wrong password, the broker answers nothing.
        anonymous = settings.kafka.model_copy(
            update={"security_protocol": "PLAINTEXT", "sasl_mechanism": None,
                    "sasl_username": None, "sasl_password": None}
        )  # fmt: skip
        assert not bus.ping(anonymous, timeout_s=5)
        wrong = settings.kafka.model_copy(update={"sasl_password": SecretStr("not-it")})
        assert not bus.ping(wrong, timeout_s=5)
        assert bus.ping(settings.kafka, timeout_s=5)
        # The password is in no process's command line and no log.
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    assert password not in Path(f"/proc/{pid}/cmdline").read_text()
                except OSError:
                    continue
        for log in (tmp_path / "state" / "logs").iterdir():
            assert password not in log.read_text(errors="replace"), log
    finally:
        run_cli("down", "--volumes", env=env, timeout=180)


def test_a_broker_beyond_loopback_without_authentication_is_refused(tmp_path: Path) -> None:
    overrides = {**stack_overrides(tmp_path / "state"), "kafka.host": "0.0.0.0"}
    result = run_cli("up", env=overrides_env(overrides), timeout=120)
    assert result.returncode != 0
    assert "beyond loopback, without authentication" in result.stderr
    assert "FRAUDSTREAM_KAFKA__SASL_PASSWORD" in result.stderr
