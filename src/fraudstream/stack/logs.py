"""The services' log files: their last lines, and new lines as they are written."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["follow", "last_lines"]


def last_lines(path: Path, count: int) -> list[str]:
    """The last ``count`` lines of ``path`` (none when it does not exist yet)."""
    if count == 0 or not path.exists():
        return []
    return path.read_text(errors="replace").splitlines()[-count:]


def follow(files: dict[str, Path], poll_s: float = 0.25) -> Iterator[tuple[str, str]]:
    """(service, line) for every complete line written to ``files`` from now on, forever; a log
    that is truncated or recreated is read again from its start."""
    positions = {name: path.stat().st_size if path.exists() else 0 for name, path in files.items()}
    while True:
        quiet = True
        for name, path in files.items():
            if not path.exists():
                continue
            size = path.stat().st_size
            if size < positions[name]:
                positions[name] = 0  # the log was truncated or recreated
            if size > positions[name]:
                with path.open("rb") as handle:
                    handle.seek(positions[name])
                    chunk = handle.read()
                complete = chunk[: chunk.rfind(b"\n") + 1]
                positions[name] += len(complete)
                for line in complete.decode(errors="replace").splitlines():
                    quiet = False
                    yield name, line
        if quiet:
            time.sleep(poll_s)
