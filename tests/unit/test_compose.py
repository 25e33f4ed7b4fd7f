"""The Docker Compose deployment, checked without a Docker engine: docker-compose.yml against
the Compose specification, the Dockerfile against hadolint, and both against the native CLI
and settings tree, so that the containers cannot drift from what `fraudstream up` runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict
from ruamel.yaml import YAML

from fraudstream.api.server import listening_problem
from fraudstream.config import (
    ENV_PREFIX,
    KafkaSettings,
    Settings,
    env_name,
    load_settings,
    setting_paths,
)
from fraudstream.store.db import engine_conninfo
from fraudstream.store.roles import API_ROLE, ENGINE_ROLE

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
IMAGE = "fraudstream:local"
# What a user puts in .env; the values only need to be valid.
USER_ENV = {
    "POSTGRES_PASSWORD": "pg0password",
    "POSTGRES_SUPERUSER_PASSWORD": "su0password",
    "DASHBOARD_DB_PASSWORD": "db0password",
    "DASHBOARD_ADMIN_PASSWORD": "ui0password-admin",
    "API_DB_PASSWORD": "api0password",
    "GRAFANA_ADMIN_PASSWORD": "gf0password",
    "ENGINE_DB_PASSWORD": "en0password",
}
ENGINES = ("local", "spark")
# Read by Spark itself (where its UI listens); read by `init` once (the first dashboard user).
NOT_SETTINGS = {"SPARK_LOCAL_IP", "DASHBOARD_ADMIN_PASSWORD"}
LONG_RUNNING = {
    "kafka", "postgres", "engine", "simulator", "dashboard", "api", "prometheus", "grafana",
}  # fmt: skip


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name  # the virtual environment's console scripts
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is missing: it is in the dev extra (`pip install -e '.[dev]'`)"
    return found


_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def _interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?error}``, as it reads .env."""
    if isinstance(value, dict):
        return {key: _interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        current = env.get(name)
        unset = current is None or (current == "" and op is not None and op.startswith(":"))
        if op is not None and op.endswith("?") and unset:
            raise KeyError(f"{name}: {arg}")
        if op is not None and op.endswith("-") and unset:
            return str(arg)
        return current or ""

    return _VARIABLE.sub(substitute, value)


def _compose(engine: str = "local") -> dict[str, Any]:
    """docker-compose.yml as Compose resolves it (YAML merge keys, variables from .env)."""
    raw = YAML(typ="safe", pure=True).load(COMPOSE_FILE.read_text())
    config: dict[str, Any] = _interpolate(raw, {**USER_ENV, "ENGINE": engine})
    return config


def _ours(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in config["services"].items() if s.get("image") == IMAGE}


def _dockerfile_instructions() -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        logical += line.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        instruction, _, arguments = logical.strip().partition(" ")
        yield instruction.upper(), arguments.strip()
        logical = ""


def _image_env() -> dict[str, str]:
    """The runtime stage's ENV (the last stage's; its FRAUDSTREAM_… settings)."""
    env: dict[str, str] = {}
    for instruction, arguments in _dockerfile_instructions():
        if instruction == "FROM":
            env = {}
        elif instruction == "ENV":
            for pair in arguments.split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def test_the_compose_file_follows_the_compose_specification() -> None:
    # The published Compose specification schema, as vendored by check-jsonschema.
    result = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def _compose_plugin() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    probe = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, check=False
    )
    return [docker, "compose"] if probe.returncode == 0 else None


@pytest.mark.parametrize("engine", ENGINES)
def test_docker_compose_config_accepts_it(engine: str, tmp_path: Path) -> None:
    plugin = _compose_plugin()
    if plugin is None:
        pytest.skip(
            "the Docker Compose plugin is not installed, and no registry this project uses "
            "serves it; the specification schema test stands in"
        )
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in {**USER_ENV, "ENGINE": engine}.items()))
    result = subprocess.run(
        [*plugin, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE),
         "--env-file", str(env_file), "config", "--quiet"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_the_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_runs_the_cli_as_an_unprivileged_user() -> None:
    instructions = list(_dockerfile_instructions())
    stages = [arguments for instruction, arguments in instructions if instruction == "FROM"]
    assert len(stages) >= 2, "multi-stage: build tools stay out of the runtime image"
    last = max(i for i, (instruction, _) in enumerate(instructions) if instruction == "FROM")
    runtime = dict(instructions[last:])
    assert runtime["ENTRYPOINT"] == '["fraudstream"]'
    build = " ".join(arguments for _, arguments in instructions[:last])
    assert "[spark]" in build and "fraudstream setup" in build, "ENGINE=spark needs both"
    assert "openjdk-17-jre-headless" in " ".join(a for _, a in instructions[last:])
    assert runtime["USER"].split(":")[0] not in ("", "0", "root")
    # What the image copies from the build context gets past .dockerignore.
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().split()}
    for instruction, arguments in instructions:
        if instruction == "COPY" and "--from=" not in arguments:
            *sources, _target = arguments.split()
            assert set(sources) <= allowed, f"COPY {sources} but .dockerignore keeps them out"


def test_the_services_start_in_order_and_report_health() -> None:
    config = _compose()
    services = config["services"]
    assert {"kafka", "postgres", "init", "engine", "simulator", "dashboard", "api"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["kafka"]["image"] == f"apache/kafka:{KafkaSettings().version}", (
        "the container runs the Kafka release the native stack runs"
    )
    assert "KAFKA_PROCESS_ROLES" in services["kafka"]["environment"]  # KRaft, no ZooKeeper
    assert services["postgres"]["image"].startswith("postgres:")
    for name in LONG_RUNNING:
        assert "healthcheck" in services[name], f"{name} has no health check"
    assert "healthcheck" not in services["init"] and services["init"]["restart"] == "no"
    for name, service in services.items():
        for needed, condition in service.get("depends_on", {}).items():
            assert needed in services, f"{name} depends on unknown {needed}"
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[needed], f"{name} waits for {needed}'s health"
    for name in ("engine", "simulator", "dashboard", "api"):
        depends = services[name]["depends_on"]
        assert depends["init"]["condition"] == "service_completed_successfully", name
    published = {  # host ports, the first of a range
        port.rsplit(":", 2)[-2].split("-")[0]
        for service in services.values()
        for port in service.get("ports", [])
    }
    assert {"9092", "5432", "8501", "4040", "8000", "9090", "3000"} <= published
    declared = set(config["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):  # configuration from the checkout, read-only
                assert source.startswith("./deploy/") and volume.endswith(":ro"), volume
                assert (ROOT / source).is_dir(), f"{source} is not in the checkout"
            else:
                assert source in declared, f"volume {source} is not a named volume"
    assert {"kafka-data", "postgres-data", "models"} <= declared


def _commands() -> dict[str, list[str]]:
    """Every fraudstream command line the containers run, as arguments of the CLI: their
    commands (with each engine) and their health checks."""
    commands: dict[str, list[str]] = {}
    for engine in ENGINES:
        for name, service in _ours(_compose(engine)).items():
            commands[f"{name}:{engine}"] = list(service["command"])
            check = service.get("healthcheck", {}).get("test")
            if check is not None:
                assert check[:2] == ["CMD", "fraudstream"], f"{name}'s health check: {check}"
                commands[f"{name} health check"] = check[2:]
    unique = {" ".join(args): label for label, args in commands.items()}
    return {label: commands[label] for label in unique.values()}


@pytest.mark.parametrize(("label", "arguments"), sorted(_commands().items()))
def test_every_container_command_exists_in_the_native_cli(label: str, arguments: list[str]) -> None:
    # The image's ENTRYPOINT is `fraudstream`, the console script pyproject.toml installs.
    result = subprocess.run(
        [_tool("fraudstream"), *arguments, "--help"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, f"{label}: fraudstream {' '.join(arguments)}\n{result.stderr}"
    assert "Usage: fraudstream" in result.stdout


def test_the_engine_is_chosen_by_the_environment() -> None:
    assert _ours(_compose("local"))["engine"]["command"] == ["score", "--engine", "local"]
    assert _ours(_compose("spark"))["engine"]["command"] == ["score", "--engine", "spark"]
    raw = YAML(typ="safe", pure=True).load(COMPOSE_FILE.read_text())
    assert _interpolate(raw, USER_ENV)["services"]["engine"]["command"][-1] == "local"


@pytest.mark.parametrize("engine", ENGINES)
def test_containers_set_only_settings_the_settings_tree_accepts(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    known = {env_name(path) for path in setting_paths()}
    image_env = {k: v for k, v in _image_env().items() if k.startswith(ENV_PREFIX)}
    assert set(image_env) <= known, set(image_env) - known
    for name, service in _ours(_compose(engine)).items():
        environment = {key: str(value) for key, value in service["environment"].items()}
        settings_env = {k: v for k, v in environment.items() if k.startswith(ENV_PREFIX)}
        unknown = set(settings_env) - known
        assert not unknown, f"{name} sets {unknown}, which are not settings"
        others = set(environment) - set(settings_env)
        assert others <= NOT_SETTINGS, f"{name} sets {others - NOT_SETTINGS}"
        # …and their values are valid: the container's settings load.
        settings = _container_settings({**image_env, **settings_env}, monkeypatch)
        assert not settings.kafka.managed and not settings.database.managed, name
        assert str(settings.state_dir) == "/var/lib/fraudstream"
        assert settings.models_dir == Path("/var/lib/fraudstream/models")


def _container_settings(environment: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    with monkeypatch.context() as patch:
        for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
            patch.delenv(key)
        for key, value in environment.items():
            patch.setenv(key, value)
        return load_settings()


def test_the_api_is_reached_only_through_the_hosts_loopback_as_its_own_user(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = _ours(_compose())["api"]
    assert service["command"] == ["api"]
    environment = {key: str(value) for key, value in service["environment"].items()}
    image_env = {k: v for k, v in _image_env().items() if k.startswith(ENV_PREFIX)}
    settings = _container_settings({**image_env, **environment}, monkeypatch)
    # It listens beyond the container's loopback, which it refuses without TLS unless told
    # a proxy terminates TLS in front; the host publishes the plain port on loopback only.
    assert not settings.api.loopback and settings.api.insecure_beyond_loopback
    assert listening_problem(settings.api) is None
    assert service["ports"] == [f"127.0.0.1:8000:{settings.api.port}"]
    assert settings.api.database_url is not None
    user = conninfo_to_dict(settings.api.database_url.get_secret_value())["user"]
    assert user == API_ROLE
    exposed = [a for instruction, a in _dockerfile_instructions() if instruction == "EXPOSE"]
    assert str(settings.api.port) in " ".join(exposed).split()


def test_the_database_owner_is_no_superuser() -> None:
    """The image's superuser only runs deploy/postgres/initdb on a new volume, which creates
    the owner the fraudstream containers log in as (without SUPERUSER) and its database."""
    postgres = _compose()["services"]["postgres"]
    assert postgres["environment"]["POSTGRES_USER"] == "postgres"
    mounted = [v for v in postgres["volumes"] if v.endswith(":/docker-entrypoint-initdb.d:ro")]
    assert mounted == ["./deploy/postgres/initdb:/docker-entrypoint-initdb.d:ro"]
    script = ROOT / "deploy" / "postgres" / "initdb" / "10-fraudstream-owner.sh"
    assert subprocess.run(["sh", "-n", str(script)], check=False).returncode == 0
    text = script.read_text()
    url = _ours(_compose())["engine"]["environment"]["FRAUDSTREAM_DATABASE__URL"]
    owner = conninfo_to_dict(str(url))
    assert f"CREATE ROLE {owner['user']} LOGIN NOSUPERUSER" in text
    assert f"CREATE DATABASE {owner['dbname']} OWNER {owner['user']}" in text
    assert postgres["environment"]["OWNER_PASSWORD"] == owner["password"]


def test_the_engines_log_in_as_their_own_user(monkeypatch: pytest.MonkeyPatch) -> None:
    service = _ours(_compose())["engine"]
    environment = {key: str(value) for key, value in service["environment"].items()}
    image_env = {k: v for k, v in _image_env().items() if k.startswith(ENV_PREFIX)}
    settings = _container_settings({**image_env, **environment}, monkeypatch)
    assert settings.engine.database_url is not None
    user = conninfo_to_dict(settings.engine.database_url.get_secret_value())["user"]
    assert user == ENGINE_ROLE
    assert engine_conninfo(settings) == settings.engine.database_url.get_secret_value()


def test_the_env_example_names_every_variable_and_only_known_settings() -> None:
    text = ENV_EXAMPLE.read_text()
    names = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))
    used = {match["name"] for match in _VARIABLE.finditer(COMPOSE_FILE.read_text())}
    assert used <= names, f".env.example lacks {used - names}"
    known = {env_name(path) for path in setting_paths()}
    settings = {name for name in names if name.startswith(ENV_PREFIX)}
    assert settings and settings <= known, settings - known
    for password in USER_ENV:  # no default passwords: the user sets them
        assert re.search(rf"^{password}=$", text, flags=re.MULTILINE), password
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", ".env"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0, ".env (with the passwords) must be git-ignored"
