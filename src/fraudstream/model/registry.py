"""Versioned model artifacts: model file + metadata, the CURRENT (champion) and CHALLENGER
pointers, promotion and its history.

A version is named by the content hash of its model file and metadata, so the same training
run gives the same version, and a changed file is detected when it is loaded. Promotion
rewrites CURRENT atomically; engines watch it and switch without restarting.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fraudstream.model.backends import Backend, backend

__all__ = ["ModelArtifact", "Registry", "RegistryError"]


class RegistryError(RuntimeError):
    """A model is missing, incomplete or altered; the message says which and what to do."""


@dataclass
class ModelArtifact:
    version: str
    metadata: dict[str, Any]
    model: Any

    @property
    def backend(self) -> Backend:
        return backend(self.metadata["backend"])


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def _current_file(self) -> Path:
        return self.root / "CURRENT"

    @property
    def _challenger_file(self) -> Path:
        return self.root / "CHALLENGER"

    @property
    def _promotions_file(self) -> Path:
        return self.root / "PROMOTIONS"

    def save(self, model: Any, metadata: dict[str, Any]) -> str:
        """Store a trained model; returns its version (the content hash)."""
        engine = backend(metadata["backend"])
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        engine.save(model, staging / engine.file_name)
        model_hash = hashlib.sha256((staging / engine.file_name).read_bytes()).hexdigest()
        core = {
            k: v for k, v in metadata.items() if k not in ("version", "content_hash", "created_at")
        }
        digest = hashlib.sha256(
            model_hash.encode() + json.dumps(core, sort_keys=True, default=str).encode()
        ).hexdigest()
        version = f"m-{digest[:12]}"
        full = {**metadata, "version": version, "content_hash": digest, "model_sha256": model_hash}
        (staging / "metadata.json").write_text(
            json.dumps(full, indent=2, sort_keys=True, default=str)
        )
        target = self.root / version
        if target.exists():
            shutil.rmtree(staging)  # the same model again: keep the first copy
        else:
            staging.rename(target)
        return version

    def add(self, model: Any, metadata: dict[str, Any], *, promote: bool | None = None) -> str:
        """Store a trained model (``save``) and make it the current one when ``promote``, or,
        with ``promote`` None, when no model is current yet; returns its version."""
        version = self.save(model, metadata)
        if promote or (promote is None and self.current() is None):
            self.promote(version)
        return version

    def versions(self) -> list[dict[str, Any]]:
        """Metadata of every stored model, newest first."""
        found = []
        for directory in self.root.glob("m-*"):
            try:
                found.append(json.loads((directory / "metadata.json").read_text()))
            except (OSError, ValueError):
                continue
        return sorted(found, key=lambda m: str(m.get("created_at", "")), reverse=True)

    def metadata(self, version: str) -> dict[str, Any]:
        path = self.root / version / "metadata.json"
        if not path.exists():
            known = ", ".join(m["version"] for m in self.versions()) or "none"
            raise RegistryError(f"no model {version!r} in {self.root} (known: {known})")
        return dict(json.loads(path.read_text()))

    def load(self, version: str | None = None) -> ModelArtifact:
        version = version or self.current()
        if version is None:
            raise RegistryError(
                f"no model has been promoted in {self.root}: run `fraudstream train` first"
            )
        metadata = self.metadata(version)
        engine = backend(metadata["backend"])
        model_file = self.root / version / engine.file_name
        if hashlib.sha256(model_file.read_bytes()).hexdigest() != metadata["model_sha256"]:
            raise RegistryError(f"model file of {version} was altered after it was stored")
        return ModelArtifact(version=version, metadata=metadata, model=engine.load(model_file))

    def current(self) -> str | None:
        try:
            return self._current_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def promote(self, version: str) -> None:
        """Make ``version`` the champion (the engines switch to it within
        ``engine.model_check_interval_s``); a challenger promoted stops being one."""
        self.metadata(version)  # must exist
        self._write(self._current_file, version)
        with self._promotions_file.open("a") as history:
            history.write(version + "\n")
        if self.challenger() == version:
            self.set_challenger(None)

    def champions(self) -> list[str]:
        """Every version promoted, oldest first (a version promoted again appears again)."""
        try:
            return self._promotions_file.read_text().split()
        except FileNotFoundError:
            current = self.current()
            return [current] if current else []

    def previous_champion(self) -> str | None:
        """The champion before the current one (what a rollback returns to)."""
        current = self.current()
        earlier = [v for v in self.champions() if v != current]
        return earlier[-1] if earlier else None

    def challenger(self) -> str | None:
        """The version the engines score in shadow beside the champion, if any."""
        try:
            return self._challenger_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def set_challenger(self, version: str | None) -> None:
        if version is None:
            self._challenger_file.unlink(missing_ok=True)
            return
        self.metadata(version)  # must exist
        if version == self.current():
            raise RegistryError(f"{version} is the champion: it cannot also be its challenger")
        self._write(self._challenger_file, version)

    def _write(self, target: Path, version: str) -> None:
        """Replace a pointer file atomically: an engine never reads half of it."""
        self.root.mkdir(parents=True, exist_ok=True)
        temporary = self.root / f".{target.name}.tmp"
        temporary.write_text(version + "\n")
        os.replace(temporary, target)
