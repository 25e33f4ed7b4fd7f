"""Shared fixtures: the real Kafka broker and PostgreSQL server, started by fraudstream itself."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest

from fraudstream.config import Settings, load_settings
from fraudstream.features import history_features
from fraudstream.model.data import from_dataset
from fraudstream.model.registry import Registry
from fraudstream.model.train import train
from fraudstream.simulator.adapters import load_dataset
from fraudstream.simulator.generator import generate_blocks, preset
from fraudstream.simulator.history import write_history
from fraudstream.stack import Stack
from fraudstream.store.db import connect

# Each test worker (pytest-xdist) hands out ports from a range of its own, below the
# kernel's ephemeral range: two workers starting stacks at once cannot pick the same port,
# and no client's source port can take one between the pick and the server's bind.
_PORTS_PER_WORKER = 2_000
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_FIRST_PORT = 20_000 + _PORTS_PER_WORKER * (_WORKER % 6)
_next_ports = itertools.cycle(range(_FIRST_PORT, _FIRST_PORT + _PORTS_PER_WORKER))


def free_port() -> int:
    """A loopback port no one listens on, never the same twice in a row of this worker."""
    for port in _next_ports:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("unreachable: the cycle never ends")


def stack_overrides(state_dir: Path) -> dict[str, str]:
    """Settings for a private stack: its own state directory and free ports."""
    return {
        "state_dir": str(state_dir),
        "pipeline": "false",
        "kafka.port": str(free_port()),
        "kafka.controller_port": str(free_port()),
        "database.port": str(free_port()),
        "dashboard.port": str(free_port()),
        "api.port": str(free_port()),
        **{f"metrics.{service}_port": str(free_port())
           for service in ("engine", "api", "simulator", "dashboard")},
    }  # fmt: skip


def overrides_env(overrides: dict[str, str]) -> dict[str, str]:
    """The same overrides as FRAUDSTREAM_… variables, for the CLI in a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSTREAM_")}
    for key, value in overrides.items():
        env["FRAUDSTREAM_" + key.replace(".", "__").upper()] = value
    return env


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 180, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fraudstream", *args],
        env={**env, "COLUMNS": "200"},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """One real broker + database for the whole session, torn down (with its data) at the end."""
    settings = load_settings(overrides=stack_overrides(tmp_path_factory.mktemp("stack") / "state"))
    stack = Stack(settings)
    try:
        stack.up()
        yield settings
    finally:
        stack.down(volumes=True)


@pytest.fixture
def db(stack_settings: Settings) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with connect(stack_settings) as conn:
        yield conn


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small XGBoost model, trained once per session on a handbook-style history."""
    params = preset("handbook", n_customers=600, n_terminals=1_200, days=160, seed=8)
    history = tmp_path_factory.mktemp("engine-model") / "h.parquet"
    write_history(generate_blocks(params), history, params)
    frame, frauds = from_dataset(load_dataset(history, tokenizer=None))
    result = train(
        frame, history_features(frame, frauds), backend_name="xgboost",
        grid=[{"n_estimators": 80, "max_depth": 4}],
        created_at=datetime(2026, 1, 1, tzinfo=timezone.utc), source="test",
    )  # fmt: skip
    registry = Registry(history.parent / "models")
    registry.promote(registry.save(result.model, result.metadata))
    return registry.root
