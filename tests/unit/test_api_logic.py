"""The decision API's logic without its services: the `api` service of `up`, and (below) the
fallback policy, the rate limit, the listening rule, keys and decoder messages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from fraudstream.api.app import create_app
from fraudstream.config import ENV_PREFIX, Settings, load_settings
from fraudstream.stack import ServiceError
from fraudstream.stack.pipeline import pipeline_services
from fraudstream.stack.postgres import api_password_file
from fraudstream.store.db import api_conninfo
from fraudstream.store.roles import API_ROLE

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [key for key in os.environ if key.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)


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


def test_the_api_connects_as_its_own_user(tmp_path: Path) -> None:
    managed = _settings(tmp_path, **{"database.password": "owner"})
    params = conninfo_to_dict(api_conninfo(managed))
    assert params["user"] == API_ROLE
    assert params["password"] == api_password_file(managed).read_text().strip() != "owner"
    assert api_password_file(managed).stat().st_mode & 0o777 == 0o600
    external = "postgresql://owner:pw@db/fraudstream"
    assert api_conninfo(_settings(tmp_path, **{"database.url": external})) == external
    own = "postgresql://fraudstream_api:pw@db/fraudstream"
    both = _settings(tmp_path, **{"database.url": external, "api.database_url": own})
    assert api_conninfo(both) == own


def test_the_committed_openapi_document_is_the_apps() -> None:
    document = json.dumps(create_app(load_settings()).openapi(), indent=2, sort_keys=True) + "\n"
    committed = (ROOT / "docs" / "openapi.json").read_text()
    assert committed == document, (
        "docs/openapi.json is not what the API serves: regenerate it with "
        "`python -m fraudstream api --openapi docs/openapi.json`"
    )
