import dataclasses
import json
import socket
import sys
from pathlib import Path

import pytest

from fraudstream.stack.process import (
    PidRecord,
    ServiceError,
    port_in_use,
    read_pid,
    running,
    spawn,
    stop,
    wait_until,
)


def _sleeper(pid_file: Path) -> PidRecord:
    """A service that only sleeps, recorded in ``pid_file``."""
    return spawn(
        [sys.executable, "-c", "import time; time.sleep(30)"],
        pid_file=pid_file,
        log_file=pid_file.with_suffix(".log"),
        address="x:1",
    )


def test_spawn_detaches_records_and_stops(tmp_path: Path) -> None:
    pid_file, log_file = tmp_path / "run" / "svc.pid", tmp_path / "logs" / "svc.log"
    code = "import signal, sys, time; print('ready', flush=True); time.sleep(60)"
    record = spawn(
        [sys.executable, "-c", code], pid_file=pid_file, log_file=log_file, address="x:1"
    )
    wait_until(lambda: "ready" in log_file.read_text(), timeout_s=10, what="svc")
    assert read_pid(pid_file) == record
    assert running(record)
    assert stop(pid_file, timeout_s=10) is True
    assert not running(record)
    assert not pid_file.exists()
    assert stop(pid_file) is False  # stopping twice is harmless


def test_a_reused_pid_is_not_mistaken_for_our_service(tmp_path: Path) -> None:
    pid_file = tmp_path / "svc.pid"
    record = _sleeper(pid_file)
    imposter = dataclasses.replace(
        record, create_time=record.create_time - 1000, start_ticks=(record.start_ticks or 0) - 7
    )
    assert running(record) and not running(imposter)
    pid_file.write_text(json.dumps(dataclasses.asdict(imposter)))
    assert stop(pid_file) is False  # never signals a process it did not start
    assert running(record)
    pid_file.write_text(json.dumps(dataclasses.asdict(record)))
    assert stop(pid_file) is True


def test_a_clock_change_does_not_make_our_service_a_stranger(tmp_path: Path) -> None:
    """The system clock stepped by NTP moves every process's wall-clock start time; the
    record's start since boot still names the process."""
    pid_file = tmp_path / "svc.pid"
    record = _sleeper(pid_file)
    assert record.start_ticks is not None
    stepped = dataclasses.replace(record, create_time=record.create_time + 5.0)
    assert running(stepped)
    pid_file.write_text(json.dumps(dataclasses.asdict(stepped)))
    assert stop(pid_file, timeout_s=10) is True
    assert not running(record)


def test_a_record_written_before_start_ticks_is_still_read(tmp_path: Path) -> None:
    pid_file = tmp_path / "svc.pid"
    record = _sleeper(pid_file)
    old = {k: v for k, v in dataclasses.asdict(record).items() if k != "start_ticks"}
    pid_file.write_text(json.dumps(old))
    assert read_pid(pid_file) == dataclasses.replace(record, start_ticks=None)
    assert stop(pid_file, timeout_s=10) is True


def test_wait_until_reports_an_early_exit_with_the_log_tail(tmp_path: Path) -> None:
    pid_file, log_file = tmp_path / "svc.pid", tmp_path / "svc.log"
    spawn(
        [sys.executable, "-c", "print('boom: bad config'); raise SystemExit(3)"],
        pid_file=pid_file,
        log_file=log_file,
        address="x:1",
    )
    with pytest.raises(ServiceError, match=r"exited during start-up(.|\n)*boom: bad config"):
        wait_until(
            lambda: False,
            timeout_s=10,
            what="svc",
            alive=lambda: running(read_pid(pid_file)),
            log_file=log_file,
        )


def test_wait_until_times_out() -> None:
    with pytest.raises(ServiceError, match="not healthy after"):
        wait_until(lambda: False, timeout_s=0.2, what="svc")


def test_port_in_use() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
    assert not port_in_use("127.0.0.1", port)
