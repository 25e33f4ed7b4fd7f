"""Where a running process spends its CPU: py-spy samples it from outside (no change to the
process, native code included under the Python frame that called it) and the samples are
summarised as two tables — time inside each of our functions (inclusive) and the functions
that were on top of the stack (own time)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Profile", "ProfilerMissing", "can_sample", "parse", "py_spy", "record"]

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


class ProfilerMissing(RuntimeError):
    """py-spy is not installed (it comes with the ``dev`` extra)."""


@dataclass(frozen=True)
class Profile:
    samples: int
    inclusive: list[tuple[str, float]]  # our functions, share of samples they were on the stack
    own: list[tuple[str, float]]  # any function, share of samples it was on top

    def markdown(self, top: int = 12) -> str:
        """The two tables, for docs/benchmarks.md."""
        lines = [
            f"{self.samples:,} samples of the engine process (py-spy, idle threads excluded).",
            "",
            "| our function (time inside it) | share | | on top of the stack (own time) | share |",
            "|---|---|---|---|---|",
        ]
        for i in range(min(top, max(len(self.inclusive), len(self.own)))):
            left = self.inclusive[i] if i < len(self.inclusive) else ("", None)
            right = self.own[i] if i < len(self.own) else ("", None)
            lines.append(
                f"| {_code(left[0])} | {_share(left[1])} | | {_code(right[0])} | "
                f"{_share(right[1])} |"
            )
        return "\n".join(lines)


def record(pid: int, seconds: float, rate: int = 200) -> Profile:
    """Sample ``pid`` for ``seconds`` at ``rate`` Hz (the process keeps running meanwhile)."""
    profiler = py_spy()
    if profiler is None:
        raise ProfilerMissing("py-spy is not installed: pip install 'fraudstream[dev]'")
    with tempfile.TemporaryDirectory(prefix="fraudstream-profile-") as root:
        out = Path(root) / "stacks.txt"
        done = subprocess.run(
            [profiler, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
             "--rate", str(rate), "--format", "raw", "--output", str(out), "--nonblocking"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"py-spy failed: {done.stderr.strip()[-500:]}")
        return parse(out.read_text().splitlines())


def parse(lines: Iterable[str], package: str = "fraudstream") -> Profile:
    """Collapsed stacks (``frame;frame;… count``, root first) → shares per function."""
    inside: Counter[str] = Counter()
    top: Counter[str] = Counter()
    samples = 0
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [_function(frame) for frame in stack.split(";")]
        top[frames[-1]] += count
        for frame in set(frames):
            if f"{package}/" in frame and not frame.startswith("<module>"):
                inside[frame] += count
    total = max(samples, 1)
    return Profile(
        samples,
        [(name, n / total) for name, n in inside.most_common()],
        [(name, n / total) for name, n in top.most_common()],
    )


def _function(frame: str) -> str:
    """``score (fraudstream/model/scoring.py:34)`` → ``score (fraudstream/model/scoring.py)``:
    one entry per function, whatever line it was on."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "src/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['function']} ({path})"


def can_sample() -> bool:
    """py-spy is installed and may attach to the engine, a process it did not start: as
    root, or where Yama's ptrace scope allows it (0); most desktops default to 1."""
    if py_spy() is None:
        return False
    try:
        scope = Path("/proc/sys/kernel/yama/ptrace_scope").read_text().strip()
    except OSError:
        scope = "0"  # no Yama: classic ptrace rules, same user
    return os.geteuid() == 0 or scope == "0"


def py_spy() -> str | None:
    """py-spy's executable: on the PATH, or beside this Python (a virtual environment's)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def _code(name: str) -> str:
    return f"`{name}`" if name else ""


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"
