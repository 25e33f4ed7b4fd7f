"""Runs the quix-streams peer (``bench/peer_quix/app.py``) on a benchmark's backlog.

quix-streams pins an older confluent-kafka than fraudstream's, so the peer gets its own
virtual environment, made once under the cache directory from ``peer_quix/requirements.txt``
(remade when that file changes). The peer drains the same backlog as the engine, on the same
broker and database, into its own table; it is measured the same way (rows stored, first to
last stored row), with its CPU and peak RSS read just before it is stopped.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
import venv
from pathlib import Path

import psutil
from psycopg.conninfo import conninfo_to_dict

from bench.engine import Drained, Progress, peak_rss, stored_span
from fraudstream.config import Settings
from fraudstream.store.db import connect, conninfo

__all__ = ["QuixPeer", "peer_python"]

_HERE = Path(__file__).parent / "peer_quix"
_TABLE = """
CREATE TABLE IF NOT EXISTS peer_predictions (
    tx_id text PRIMARY KEY, card_id text, terminal_id text, amount double precision,
    event_time text, score double precision, decision text,
    stored_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


def peer_python(cache_dir: Path, progress: Progress) -> Path:
    """The peer environment's interpreter, made (or remade) when its requirements changed."""
    requirements = _HERE / "requirements.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    home = cache_dir / f"peer-quix-{digest}"
    python = home / "bin" / "python"
    if (home / ".ready").exists():
        return python
    progress("peer: making its virtual environment (quix-streams, once)")
    venv.EnvBuilder(clear=True, with_pip=True).create(home)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-r", str(requirements)], check=True
    )
    (home / ".ready").touch()
    return python


class QuixPeer:
    """One drain of ``trial``'s backlog by the quix-streams peer."""

    def __init__(self, trial: Settings, python: Path, model_dir: Path, root: Path) -> None:
        self.trial = trial
        self.python = python
        self.model_dir = model_dir
        self.root = root

    def drain(self, sent: int, timeout_s: float = 1_800.0) -> Drained:
        with connect(self.trial) as conn:
            conn.execute(_TABLE)
        params = conninfo_to_dict(conninfo(self.trial))
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FRAUDSTREAM_")},
            "PEER_BROKER": self.trial.kafka.bootstrap,
            "PEER_TOPIC": self.trial.kafka.topics.transactions,
            "PEER_GROUP": f"peer-{self.trial.engine.group_id}",
            "PEER_STATE_DIR": str(self.root / f"peer-state-{self.trial.engine.group_id}"),
            "PEER_MODEL_DIR": str(self.model_dir),
            "PEER_PG": ":".join(
                str(params.get(key) or "") for key in ("host", "port", "dbname", "user", "password")
            ),
            "PEER_COUNT": "0",
        }
        log = (self.root / "peer.log").open("ab")
        process = subprocess.Popen(
            [str(self.python), str(_HERE / "app.py")], env=env, stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + timeout_s
            while stored_span(self.trial, "peer_predictions")[0] < sent:
                if process.poll() is not None:
                    raise RuntimeError(f"peer: exited with {process.returncode}; see peer.log")
                if time.monotonic() > deadline:
                    stored = stored_span(self.trial, "peer_predictions")[0]
                    raise RuntimeError(f"peer: {stored:,} of {sent:,} stored in time")
                time.sleep(0.5)
            peer = psutil.Process(process.pid)
            times = peer.cpu_times()
            cpu = times.user + times.system
            peak = peak_rss(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()
        rows, seconds = stored_span(self.trial, "peer_predictions")
        return Drained(rows, seconds, peak, 0.0, {"peer": cpu})
