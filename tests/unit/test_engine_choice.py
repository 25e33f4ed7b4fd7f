"""Which engine `fraudstream score` runs: the registry (engines/base.py), the engine.kind
setting, and the --engine option that overrides it."""

import threading
from pathlib import Path
from typing import get_args

import pytest
from typer.testing import CliRunner

from fraudstream.cli import engine as engine_command
from fraudstream.cli.app import app
from fraudstream.clock import SystemClock
from fraudstream.config import EngineSettings, load_settings
from fraudstream.engines.base import ENGINES, create_engine

from ..conftest import overrides_env, run_cli


def test_the_setting_offers_exactly_the_registered_engines() -> None:
    assert get_args(EngineSettings.model_fields["kind"].annotation) == tuple(ENGINES)


def test_an_unknown_kind_is_refused_naming_the_choices(tmp_path: Path) -> None:
    settings = load_settings(overrides={"state_dir": str(tmp_path)})
    with pytest.raises(ValueError, match=r"^engine.kind must be one of local, spark, not 'nope'$"):
        create_engine("nope", settings, SystemClock())


def test_a_missing_optional_dependency_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(ENGINES, "extra", ("fraudstream_no_such_module", "Engine", "pip install x"))
    settings = load_settings(overrides={"state_dir": str(tmp_path)})
    with pytest.raises(RuntimeError) as raised:
        create_engine("extra", settings, SystemClock())
    assert str(raised.value) == "the extra engine needs fraudstream_no_such_module: pip install x"


def test_score_refuses_an_unknown_engine_with_exit_2(tmp_path: Path) -> None:
    result = run_cli("score", "--engine", "nope", env=overrides_env({"state_dir": str(tmp_path)}))
    assert result.returncode == 2
    assert "error: --engine must be one of local, spark, not 'nope'" in result.stderr
    assert "Traceback" not in result.stderr


def test_score_help_names_the_setting_and_its_environment_variable(tmp_path: Path) -> None:
    result = run_cli("score", "--help", env=overrides_env({"state_dir": str(tmp_path)}))
    assert result.returncode == 0
    assert "engine.kind" in result.stdout and "FRAUDSTREAM_ENGINE__KIND" in result.stdout
    assert "FRAUDSTREAM_SPARK__MASTER" in result.stdout


def test_flags_show_no_value_type_and_options_show_theirs(tmp_path: Path) -> None:
    """A flag takes no value: `--forever`, never `--forever <bool>`."""
    env = {**overrides_env({"state_dir": str(tmp_path)}), "COLUMNS": "160"}
    result = run_cli("simulate", "--help", env=env)
    assert result.returncode == 0
    assert "<bool>" not in result.stdout
    forever = next(line for line in result.stdout.splitlines() if "--forever" in line)
    assert "--no-forever" in forever
    rate = next(line for line in result.stdout.splitlines() if "--rate" in line)
    assert "<float" in rate


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """The CLI in this process, without FRAUDSTREAM_ variables or stop-signal handlers."""
    import os

    for key in [key for key in os.environ if key.startswith("FRAUDSTREAM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setattr(engine_command, "stop_on_signals", threading.Event)
    return CliRunner()


def test_score_reports_a_missing_dependency_with_exit_2(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        ENGINES, "extra", ("fraudstream_no_such_module", "Engine", "pip install 'fraudstream[x]'")
    )
    result = cli.invoke(app, ["--state-dir", str(tmp_path), "score", "--engine", "extra"])
    assert result.exit_code == 2
    assert (
        "error: the extra engine needs fraudstream_no_such_module: pip install 'fraudstream[x]'"
        in result.stderr
    )


def test_score_master_is_only_for_spark(cli: CliRunner, tmp_path: Path) -> None:
    result = cli.invoke(app, ["--state-dir", str(tmp_path), "score", "--master", "local[2]"])
    assert result.exit_code == 2
    assert "error: --master is for the spark engine, not local" in result.stderr
