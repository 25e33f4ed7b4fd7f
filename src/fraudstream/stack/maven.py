"""Jars from Maven Central, resolved once with ``mvn`` into the cache directory.

Kafka's broker and Spark's Kafka connector both come this way: a small POM from
``stack/resources`` names the artifact, ``mvn dependency:copy-dependencies`` fetches it with its
runtime dependencies, and a marker file records that the directory is complete.
"""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path

from fraudstream.config import Settings
from fraudstream.stack.process import ServiceError

__all__ = ["resolve_jars"]


def resolve_jars(
    settings: Settings, home: Path, pom: str, version: str, expected: str, what: str
) -> Path:
    """``home/libs`` with the jars of ``resources/<pom>`` at ``version``, resolving on first use.

    ``expected`` is a glob that must match once resolution worked; ``what`` names the artifact
    in errors.
    """
    libs = home / "libs"
    marker = home / ".resolved"
    if marker.exists() and marker.read_text() == version and any(libs.glob(expected)):
        return libs
    maven = shutil.which(settings.kafka.maven)
    if maven is None:
        raise ServiceError(
            f"Maven ({settings.kafka.maven!r}) is needed once to fetch {what} from Maven "
            "Central: install it (Debian/Ubuntu: `apt-get install maven`) "
            "or set FRAUDSTREAM_KAFKA__MAVEN"
        )
    home.mkdir(parents=True, exist_ok=True)
    template = resources.files("fraudstream.stack").joinpath(f"resources/{pom}").read_text()
    (home / "pom.xml").write_text(template.replace("@VERSION@", version))
    if libs.exists():
        shutil.rmtree(libs)
    result = subprocess.run(
        [
            maven, "-B", "-q", "-f", str(home / "pom.xml"),
            "dependency:copy-dependencies", "-DincludeScope=runtime",
            f"-DoutputDirectory={libs}",
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0 or not any(libs.glob(expected)):
        output = (result.stdout + result.stderr).strip().splitlines()[-15:]
        raise ServiceError(
            f"could not resolve {what} from Maven Central with {maven}:\n  " + "\n  ".join(output)
        )
    marker.write_text(version)
    return libs
