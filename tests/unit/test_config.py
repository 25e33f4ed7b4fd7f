from pathlib import Path

import pytest
from pydantic import ValidationError

from fraudstream.config import SettingsError, env_name, load_settings, setting_paths


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("FRAUDSTREAM_"):
            monkeypatch.delenv(key)


def test_defaults_describe_a_managed_local_stack() -> None:
    settings = load_settings()
    assert settings.kafka.managed and settings.database.managed
    assert settings.kafka.bootstrap == "127.0.0.1:9092"
    assert settings.kafka.partitions == 4
    assert settings.kafka.topics.all() == [
        "transactions",
        "labels",
        "alerts",
        "transactions.dlq",
        "labels.dlq",
        "decisions",
    ]
    assert settings.state_dir.is_absolute()


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDSTREAM_KAFKA__PORT", "19092")
    monkeypatch.setenv("FRAUDSTREAM_KAFKA__TOPICS__ALERTS", "fraud.alerts")
    settings = load_settings()
    assert settings.kafka.port == 19092
    assert settings.kafka.topics.alerts == "fraud.alerts"


def test_precedence_flag_over_env_over_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "fraudstream.toml"
    config.write_text("[kafka]\nport = 1111\npartitions = 8\nheap = '1g'\n")
    monkeypatch.setenv("FRAUDSTREAM_KAFKA__PORT", "2222")
    monkeypatch.setenv("FRAUDSTREAM_KAFKA__PARTITIONS", "6")
    settings = load_settings(config_file=config, overrides={"kafka.port": "3333"})
    assert settings.kafka.port == 3333  # flag
    assert settings.kafka.partitions == 6  # environment
    assert settings.kafka.heap == "1g"  # file


def test_config_file_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[database]\nport = 6543\n")
    monkeypatch.setenv("FRAUDSTREAM_CONFIG", str(config))
    assert load_settings().database.port == 6543


def test_unknown_environment_variable_is_named_with_a_suggestion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FRAUDSTREAM_KAFKA__PORTT", "1")
    with pytest.raises(SettingsError, match=r"FRAUDSTREAM_KAFKA__PORTT.*did you mean 'kafka.port'"):
        load_settings()


def test_unknown_override_key() -> None:
    with pytest.raises(SettingsError, match=r"unknown setting 'kafka.nope'"):
        load_settings(overrides={"kafka.nope": "1"})


def test_unknown_key_in_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[database]\nprot = 1\n")
    with pytest.raises(SettingsError, match=r"unknown setting 'database.prot' \(in .*c.toml\)"):
        load_settings(config_file=config)


def test_bad_value_names_key_value_and_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDSTREAM_KAFKA__PARTITIONS", "0")
    with pytest.raises(SettingsError) as error:
        load_settings()
    message = str(error.value)
    assert "kafka.partitions" in message and "FRAUDSTREAM_KAFKA__PARTITIONS" in message
    assert "'0'" in message and "greater than or equal to 1" in message


def test_bad_choice_lists_the_allowed_values() -> None:
    with pytest.raises(SettingsError, match=r"kafka.security_protocol.*'PLAINTEXT', 'SSL'"):
        load_settings(overrides={"kafka.security_protocol": "TLS"})


def test_missing_and_malformed_config_files(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(config_file=tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[kafka\nport = 1")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(config_file=broken)


def test_secrets_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDSTREAM_DATABASE__URL", "postgresql://u:hunter2@db/x")
    monkeypatch.setenv("FRAUDSTREAM_KAFKA__SASL_PASSWORD", "s3cret")
    settings = load_settings()
    assert "hunter2" not in repr(settings) and "s3cret" not in repr(settings)
    assert "hunter2" not in str(settings)
    assert settings.database.url is not None
    assert settings.database.url.get_secret_value().endswith("hunter2@db/x")
    assert settings.kafka.client_config()["sasl.password"] == "s3cret"


def test_external_services_switch_off_management(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDSTREAM_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("FRAUDSTREAM_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("FRAUDSTREAM_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("FRAUDSTREAM_KAFKA__SASL_USERNAME", "fraudstream")
    monkeypatch.setenv("FRAUDSTREAM_KAFKA__SASL_PASSWORD", "a-password")
    settings = load_settings()
    assert not settings.kafka.managed
    assert settings.kafka.client_config()["bootstrap.servers"] == "k1:9092,k2:9092"
    assert settings.kafka.client_config()["security.protocol"] == "SASL_SSL"


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValidationError):
        settings.kafka.port = 1  # type: ignore[misc]


def test_every_setting_has_an_environment_variable() -> None:
    paths = setting_paths()
    assert "kafka.topics.dlq" in paths
    assert env_name("kafka.topics.dlq") == "FRAUDSTREAM_KAFKA__TOPICS__DLQ"


def test_a_bad_value_from_set_names_set_as_its_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDSTREAM_KAFKA__PORT", "9095")  # a good one, from the environment
    with pytest.raises(SettingsError) as error:
        load_settings(overrides={"database.port": "70000"})
    assert "database.port (from --set)" in str(error.value)
    assert "FRAUDSTREAM_DATABASE__PORT" not in str(error.value)


def test_a_rule_over_several_values_names_them_not_a_variable() -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(overrides={"kafka.security_protocol": "SASL_PLAINTEXT"})
    message = str(error.value)
    assert "kafka: kafka.security_protocol SASL_PLAINTEXT needs kafka.sasl_mechanism" in message
    assert "FRAUDSTREAM_KAFKA)" not in message and "got {" not in message
