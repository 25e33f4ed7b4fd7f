"""Jar resolution through mvn: the cache is reused, and failures say what is missing."""

import stat
from pathlib import Path

import pytest

from fraudstream.config import Settings, load_settings
from fraudstream.stack.maven import resolve_jars
from fraudstream.stack.process import ServiceError


def _fake_maven(tmp_path: Path, script: str) -> str:
    """An executable standing in for mvn: records its arguments, then runs ``script``."""
    path = tmp_path / "mvn"
    path.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\n{script}\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def _settings(tmp_path: Path, maven: str) -> Settings:
    return load_settings(overrides={"kafka.maven": maven, "cache_dir": str(tmp_path / "cache")})


def test_resolves_once_then_reuses_the_cache(tmp_path: Path) -> None:
    # Writes one jar into -DoutputDirectory=…, as copy-dependencies would.
    maven = _fake_maven(
        tmp_path,
        'for a in "$@"; do case $a in -DoutputDirectory=*) d=${a#*=};; esac; done\n'
        'mkdir -p "$d" && touch "$d/kafka_2.13-4.1.0.jar"',
    )
    settings = _settings(tmp_path, maven)
    home = tmp_path / "cache" / "kafka-4.1.0"
    libs = resolve_jars(settings, home, "kafka-pom.xml", "4.1.0", "kafka_2.13-*.jar", "Kafka")
    assert [jar.name for jar in libs.glob("*.jar")] == ["kafka_2.13-4.1.0.jar"]
    assert "<version>4.1.0</version>" in (home / "pom.xml").read_text()
    resolve_jars(settings, home, "kafka-pom.xml", "4.1.0", "kafka_2.13-*.jar", "Kafka")
    assert len((tmp_path / "calls").read_text().splitlines()) == 1


def test_a_failed_resolution_names_the_artifact_and_shows_mavens_output(tmp_path: Path) -> None:
    maven = _fake_maven(tmp_path, "echo 'Could not find artifact x:y:9.9' >&2; exit 1")
    settings = _settings(tmp_path, maven)
    with pytest.raises(ServiceError, match=r"could not resolve Kafka 9\.9 .*\n.*Could not find"):
        resolve_jars(
            settings, tmp_path / "k", "kafka-pom.xml", "9.9", "kafka_2.13-*.jar", "Kafka 9.9"
        )
    assert not (tmp_path / "k" / ".resolved").exists()


def test_missing_maven_says_how_to_install_it(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "no-such-mvn")
    with pytest.raises(ServiceError, match="apt-get install maven"):
        resolve_jars(settings, tmp_path / "k", "kafka-pom.xml", "4.1.0", "*.jar", "Kafka")
