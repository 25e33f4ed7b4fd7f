"""Shared fixtures: the real Kafka broker and PostgreSQL server, started by fraudstream itself."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from fraudstream.config import Settings, load_settings
from fraudstream.stack import Stack
from fraudstream.store.db import connect


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stack_overrides(state_dir: Path) -> dict[str, str]:
    """Settings for a private stack: its own state directory and free ports."""
    return {
        "state_dir": str(state_dir),
        "pipeline": "false",
        "kafka.port": str(free_port()),
        "kafka.controller_port": str(free_port()),
        "database.port": str(free_port()),
        "dashboard.port": str(free_port()),
    }


def overrides_env(overrides: dict[str, str]) -> dict[str, str]:
    """The same overrides as FRAUDSTREAM_… variables, for the CLI in a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSTREAM_")}
    for key, value in overrides.items():
        env["FRAUDSTREAM_" + key.replace(".", "__").upper()] = value
    return env


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fraudstream", *args],
        env={**env, "COLUMNS": "200"},
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
