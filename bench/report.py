"""docs/benchmarks.md: machine description plus sections that each benchmark run replaces."""

from __future__ import annotations

import os
import platform
import re
from datetime import datetime
from importlib import metadata
from pathlib import Path

import psutil

from bench.stages import Result

__all__ = ["machine", "update_section", "update_text_section"]

_PACKAGES = ("numpy", "pandas", "pyarrow", "xgboost-cpu", "confluent-kafka", "psycopg", "msgspec")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for package in _PACKAGES:
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    memory = psutil.virtual_memory().total / 1024**3
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB; "
        f"{platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}; " + ", ".join(versions)
    )


def _figure(value: float) -> str:
    """Whole numbers from 100 up; below, enough digits to read a ratio (0.079, 2.34)."""
    if abs(value) >= 100 or value == 0:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _table(results: list[Result]) -> str:
    lines = ["| measurement | median | runs | notes |", "|---|---|---|---|"]
    for result in results:
        runs = ", ".join(_figure(run) for run in result.runs)
        lines.append(
            f"| {result.name} | **{_figure(result.value)} {result.unit}** | {runs} | "
            f"{result.note} |"
        )
    return "\n".join(lines)


def update_section(
    path: Path, name: str, title: str, results: list[Result], when: datetime, how: str
) -> None:
    """Replace (or add) the section ``name`` of the report, leaving the others as they are."""
    update_text_section(path, name, title, _table(results), when, how)


def update_text_section(
    path: Path, name: str, title: str, content: str, when: datetime, how: str
) -> None:
    """``update_section`` with any markdown as the section's content."""
    body = (
        f"<!-- bench:{name} -->\n## {title}\n\n"
        f"Measured {when:%Y-%m-%d %H:%M} UTC on: {machine()}.\n\n{content}\n\n"
        f"Reproduce: `{how}`\n<!-- /bench:{name} -->"
    )
    text = path.read_text() if path.exists() else _HEADER
    pattern = re.compile(
        rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S
    )
    text = (
        pattern.sub(lambda _m: body, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + body + "\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


_HEADER = """# Benchmarks

Figures measured by `fraudstream bench` on the machine named in each section. Benchmarks are
not tests: the test suite runs each once at a tiny size to prove it works. Each section is
replaced when its benchmark is run again; medians over the runs listed.
"""
