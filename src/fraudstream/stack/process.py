"""Detached service processes: start in their own session, remember them in a pid file, stop them.

A pid file records the pid *and* the process start time, so a pid reused by an unrelated
process after a crash is never mistaken for our service. The start time that identifies it is
counted from boot, in clock ticks: the wall-clock start time psutil reports moves whenever the
system clock is set (NTP), and a moved one made a running service look like a stranger.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

__all__ = [
    "PRIVATE_UMASK",
    "PidRecord",
    "ServiceError",
    "port_in_use",
    "port_owner",
    "read_pid",
    "running",
    "spawn",
    "start_ticks",
    "stop",
    "wait_until",
    "write_private",
]


class ServiceError(RuntimeError):
    """A service could not be started, reached or stopped; the message says what to do."""


@dataclass(frozen=True)
class PidRecord:
    pid: int
    create_time: float
    address: str
    started_at: float
    start_ticks: int | None = None  # since boot; absent from records written before it was kept


def read_pid(path: Path) -> PidRecord | None:
    try:
        return PidRecord(**json.loads(path.read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def running(record: PidRecord | None) -> bool:
    """True when the recorded process is alive and is the one we started."""
    if record is None:
        return False
    try:
        process = psutil.Process(record.pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        ticks = start_ticks(record.pid)
        if record.start_ticks is not None and ticks is not None:
            return ticks == record.start_ticks
        return bool(abs(process.create_time() - record.create_time) < 1.0)
    except psutil.Error:
        return False


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat``, field 22): a
    number no clock change can move; None where there is no such file."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces or ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


PRIVATE_UMASK = 0o077
"""What fraudstream and the services it starts create is readable by their account only."""


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file that is never readable by anyone but this account, not
    even for the moment between creating it and changing its mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        os.fchmod(file.fileno(), 0o600)  # an existing file keeps its mode through O_CREAT
        file.write(text)


def spawn(
    argv: Sequence[str],
    *,
    pid_file: Path,
    log_file: Path,
    address: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> PidRecord:
    """Start ``argv`` detached (own session, stdin closed, output appended to ``log_file``).

    With ``user`` (root only) the process runs as that account, without root's groups.
    """
    uid = gid = None
    extra_groups: list[int] | None = None
    if user is not None:
        account = pwd.getpwnam(user)
        uid, gid, extra_groups = account.pw_uid, account.pw_gid, []
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            umask=PRIVATE_UMASK,  # the service's data and logs: its account's alone
            env=env,
            cwd=cwd,
            user=uid,
            group=gid,
            extra_groups=extra_groups,
        )
    record = PidRecord(
        pid=process.pid,
        create_time=psutil.Process(process.pid).create_time(),
        address=address,
        started_at=time.time(),
        start_ticks=start_ticks(process.pid),
    )
    pid_file.write_text(json.dumps(asdict(record)))
    return record


def stop(pid_file: Path, *, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> bool:
    """Ask the recorded process to stop, wait, then kill it; returns whether one was running."""
    record = read_pid(pid_file)
    was_running = running(record)
    if record is not None and was_running:
        process = psutil.Process(record.pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(sig)
            try:
                process.wait(timeout_s)
            except psutil.TimeoutExpired:
                process.kill()
                process.wait(10)
    # Reap the zombie when the process is our own child (tests start services in-process).
    if record is not None:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(record.pid, os.WNOHANG)
    pid_file.unlink(missing_ok=True)
    return was_running


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on (or holds) ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Servers bind with SO_REUSEADDR, so connections lingering in TIME_WAIT do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def port_owner(port: int) -> str:
    """Best-effort description of the process listening on ``port``, for error messages."""
    try:
        for conn in psutil.net_connections(kind="inet"):
            listening = conn.status == psutil.CONN_LISTEN
            if conn.laddr and conn.laddr.port == port and listening and conn.pid:
                return f"{psutil.Process(conn.pid).name()} (pid {conn.pid})"
    except (psutil.Error, OSError):
        pass
    return "another process"


def wait_until(
    check: Callable[[], bool],
    *,
    timeout_s: float,
    what: str,
    alive: Callable[[], bool] | None = None,
    log_file: Path | None = None,
) -> None:
    """Poll ``check`` until it is true; fail early if the process died, naming its log."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        if check():
            return
        if alive is not None and not alive():
            raise ServiceError(f"{what} exited during start-up; see {_tail_hint(log_file)}")
        if time.monotonic() > deadline:
            raise ServiceError(
                f"{what} not healthy after {timeout_s:.0f} s; see {_tail_hint(log_file)}"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def _tail_hint(log_file: Path | None) -> str:
    if log_file is None:
        return "its log"
    lines = []
    with contextlib.suppress(OSError):
        lines = log_file.read_text(errors="replace").splitlines()[-8:]
    tail = "\n    ".join(lines)
    return f"{log_file}" + (f":\n    {tail}" if tail else "")
