"""The decision API as the tests use it: a real ``fraudstream api`` process on a free port,
a key made with ``fraudstream api-keys create``, and a plain HTTP/1.1 client."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fraudstream.config import Settings
from fraudstream.stack.postgres import EmbeddedPostgres
from fraudstream.store.db import connect
from fraudstream.store.roles import ensure_api_role

from .conftest import free_port, run_cli
from .engine_kit import engine_env, wait_for


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


class Client:
    """One keep-alive connection to the API."""

    def __init__(self, port: int, key: str | None) -> None:
        self.port, self.key = port, key
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def post(self, body: bytes | dict[str, Any], *, key: str | None = "default") -> Reply:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        token = self.key if key == "default" else key
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        for attempt in range(2):
            try:
                self._conn.request("POST", "/v1/decisions", payload, headers)
                response = self._conn.getresponse()
                break
            except (http.client.HTTPException, ConnectionError) as error:
                self._conn.close()  # a refused oversized body may close the connection
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                # The server closes a connection idle past its keep-alive time: a request
                # that found it closed is sent again, once, on a new one (as browsers do).
                closed = isinstance(error, BrokenPipeError | http.client.RemoteDisconnected)
                if attempt or not closed:
                    raise
        data = response.read()
        return Reply(response.status, json.loads(data) if data else {}, dict(response.headers))

    def get(self, path: str) -> Reply:
        self._conn.request("GET", path)
        response = self._conn.getresponse()
        data = response.read()
        return Reply(response.status, json.loads(data) if data else {}, dict(response.headers))

    def close(self) -> None:
        self._conn.close()


def with_api(settings: Settings, budget_ms: float = 50.0) -> Settings:
    """The API on a free port, its database user given its rights in this test's database
    (the server's role exists, its grants are per database)."""
    api = settings.api.model_copy(update={"port": free_port(), "budget_ms": budget_ms})
    if settings.database.managed:
        with connect(settings) as conn:
            ensure_api_role(conn, EmbeddedPostgres(settings).api_password())
    return settings.model_copy(update={"api": api})


def create_key(settings: Settings, name: str) -> str:
    done = run_cli("api-keys", "create", name, env=engine_env(settings), timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def start_api(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "fraudstream", "api"],
        env=engine_env(settings),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the API exited: {log.read_text()[-3000:]}")
        try:
            return Client(settings.api.port, None).get("/v1/health").body["status"] == "ok"
        except (OSError, http.client.HTTPException, ValueError):
            return False

    wait_for(ready, 60, "the decision API to answer /v1/health")
    return process


def stop_api(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("the API did not stop within 30 s of SIGTERM") from None
