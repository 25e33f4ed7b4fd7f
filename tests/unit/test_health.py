"""The dashboard's health probe (`fraudstream health dashboard`) against a stand-in server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fraudstream.config import Settings, load_settings
from fraudstream.stack.health import probe


class _Streamlit(BaseHTTPRequestHandler):
    """Streamlit's health endpoint, and the decision API's."""

    answer = (200, b"ok")
    api_answer = (200, b'{"status":"ok","degraded_answers":0,"undelivered":0}')

    def do_GET(self) -> None:
        paths = {"/_stcore/health": self.answer, "/v1/health": self.api_answer}
        status, body = paths.get(self.path, (404, b""))
        self.send_response(status)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Streamlit)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _settings(port: int, host: str = "127.0.0.1") -> Settings:
    return load_settings(overrides={"dashboard.port": str(port), "dashboard.host": host})


def test_a_dashboard_that_answers_ok_is_healthy(server: ThreadingHTTPServer) -> None:
    port = server.server_address[1]
    assert probe(_settings(port), "dashboard").ok
    # Listening on every interface (in a container): asked on loopback.
    assert probe(_settings(port, "0.0.0.0"), "dashboard").ok


def test_a_failing_or_absent_dashboard_is_not(
    server: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = server.server_address[1]
    monkeypatch.setattr(_Streamlit, "answer", (200, b"starting"))
    result = probe(_settings(port), "dashboard")
    assert not result.ok and "says 'starting'" in result.detail
    monkeypatch.setattr(_Streamlit, "answer", (503, b"unavailable"))
    assert not probe(_settings(port), "dashboard").ok
    server.shutdown()
    server.server_close()
    assert not probe(_settings(port), "dashboard").ok


def test_a_decision_api_that_says_ok_is_healthy_and_one_starting_is_not(
    server: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = str(server.server_address[1])
    settings = load_settings(overrides={"api.port": port})
    result = probe(settings, "api")
    assert result.ok and result.detail.endswith(f"127.0.0.1:{port}/v1/health")
    monkeypatch.setattr(_Streamlit, "api_answer", (200, b'{"status":"starting"}'))
    assert not probe(settings, "api").ok
    server.shutdown()
    server.server_close()
    assert "does not answer" in probe(settings, "api").detail


def test_an_unknown_service_is_refused() -> None:
    with pytest.raises(ValueError, match="choose from kafka, postgres, engine, dashboard, api"):
        probe(load_settings(), "zookeeper")
