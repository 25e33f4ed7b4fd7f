"""The decision API's logic without its services: the `api` service of `up`, and (below) the
fallback policy, the rate limit, the listening rule, keys and decoder messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from fraudstream.config import Settings, load_settings
from fraudstream.stack import ServiceError
from fraudstream.stack.pipeline import pipeline_services


def _settings(tmp_path: Path, **overrides: str) -> Settings:
    return load_settings(overrides={"state_dir": str(tmp_path), **overrides})


def test_up_runs_the_api_after_the_engine_and_before_the_simulator(tmp_path: Path) -> None:
    services = pipeline_services(_settings(tmp_path, **{"api.port": "8123"}), {})
    assert [s.name for s in services] == ["engine", "api", "simulator", "dashboard"]
    api = services[1]
    assert api.arguments == ["api"]
    assert api.address == "http://127.0.0.1:8123/v1/decisions"
    assert api.log_file == tmp_path / "logs" / "api.log"
    api.preflight()  # loopback: nothing to refuse


def test_up_refuses_an_api_beyond_loopback_before_starting_anything(tmp_path: Path) -> None:
    settings = _settings(tmp_path, **{"api.host": "0.0.0.0"})
    api = next(s for s in pipeline_services(settings, {}) if s.name == "api")
    with pytest.raises(ServiceError, match=r"^cannot start api: api.host is 0.0.0.0.*tls_certfile"):
        api.preflight()
