"""`fraudstream bench --only api`: the decision API under open-loop load, beside the streaming
path at the same rates, in the same run (docs/benchmarks.md).

Each run is a fresh trial (topics, database, one engine process, one API process) on a private
broker and server; the client (``bench/api_load.py``) sends requests on a fixed schedule and
times each from when it was due. Degraded answers are counted by the client among the
measured requests' answers, and checked against ``degraded_decisions``, where the API records
each one (that table counts by answer time: answers to warm-up requests that came late are in
its window too).
The kill run sends 1,000 requests/s, kills the engine with SIGKILL a third of the way in and
restarts it: every request must be answered, and every transaction recorded exactly once.
"""

from __future__ import annotations

import itertools
import json
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO

import msgspec

from bench.api_load import Body, LoadResult, run_load
from bench.engine import (
    QUICK,
    EngineBench,
    Progress,
    Sizes,
    TerminalPast,
    Workload,
    _child_env,
    _free_port,
)
from bench.stages import Result
from fraudstream.api.keys import create_key
from fraudstream.config import Settings, env_name
from fraudstream.schema import encode
from fraudstream.simulator.generator import generate_blocks, new_stream
from fraudstream.simulator.publish import TransactionRows
from fraudstream.stack.postgres import EmbeddedPostgres
from fraudstream.store.db import connect
from fraudstream.store.roles import ensure_api_role

__all__ = ["run"]


@dataclass(frozen=True)
class ApiSizes:
    rates: tuple[int, ...]
    duration_s: float
    warmup_s: float
    kill_rate: int
    kill_s: float
    client_processes: int


FULL = ApiSizes((200, 1_000, 5_000), 20.0, 5.0, 1_000, 30.0, 2)
QUICK_API = ApiSizes((200,), 3.0, 1.0, 200, 6.0, 1)
_CUSTOMERS = 20_000
_POOL = 20_000
_ID = "@tx_id@"
_STAMP = datetime(2000, 1, 1, tzinfo=timezone.utc)
_STAMP_TEXT = b"2000-01-01T00:00:00Z"


def transactions(worker: int, workers: int) -> Iterator[Body]:
    """The simulator's live traffic, each record with an id of its own and stamped with the
    time it is sent. Simulating costs about half a millisecond a record, more than serving
    one: a pool of its records is simulated before the schedule starts, then replayed under
    fresh ids (cards, terminals and amounts repeat; the load does not depend on them)."""
    del workers
    params = Workload(customers=_CUSTOMERS, seed=1_000 + worker).params()
    pool: list[tuple[bytes, bytes]] = []
    for block in generate_blocks(params.live(new_stream())):
        rows = TransactionRows(block)
        for index in range(len(block)):
            template = encode(
                msgspec.structs.replace(rows.record(index), tx_id=_ID, event_time=_STAMP)
            )
            head, _, tail = template.partition(_ID.encode())
            pool.append((head, tail.replace(_STAMP_TEXT, b"%s")))
        if len(pool) >= _POOL:
            break
    return _replayed(pool, prefix=f"b{worker}-{new_stream()}-")


def _replayed(pool: list[tuple[bytes, bytes]], prefix: str) -> Iterator[Body]:
    for serial in itertools.count():
        head, tail = pool[serial % len(pool)]
        stamp = _now().isoformat().replace("+00:00", "Z").encode()
        yield head + f"{prefix}{serial}".encode() + tail % stamp


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class _Run:
    load: LoadResult
    recorded_degraded: int  # rows of degraded_decisions answered since the measured window
    stored: int


class ApiBench:
    def __init__(self, engines: EngineBench, sizes: ApiSizes, progress: Progress) -> None:
        self.engines, self.sizes, self.progress = engines, sizes, progress
        # The requests' terminals (every worker's population names the same ones), with the
        # past a bank's database would hold: requests are stamped now.
        self.terminal_past = TerminalPast(Workload(customers=_CUSTOMERS, seed=1_000).params())

    def trial(self) -> Settings:
        today = datetime.now(timezone.utc).date()
        trial = self.engines._trial(past=(self.terminal_past, today))
        run = trial.engine.group_id.removeprefix("bench-")
        topics = trial.kafka.topics.model_copy(update={"decisions": f"dec-{run}"})
        kafka = trial.kafka.model_copy(update={"topics": topics})
        from fraudstream import bus

        bus.ensure_topics(kafka)
        api = trial.api.model_copy(update={"port": _free_port()})
        trial = trial.model_copy(update={"kafka": kafka, "api": api})
        with connect(trial) as conn:
            ensure_api_role(conn, EmbeddedPostgres(trial).api_password())
        return trial

    @contextmanager
    def serving(self, trial: Settings) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
        """An engine and an API process for ``trial``; yields the API key and the engine."""
        with connect(trial) as conn:
            _record, key = create_key(conn, "bench")
        env = _env(trial)
        log = (self.engines.root / f"api-{trial.engine.group_id}.log").open("ab")
        engine = _start(["score"], env, log)
        api = _start(["api"], env, log)
        try:
            _wait_healthy(trial, api)
            yield key, engine
        finally:
            for process in (api, engine):
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in (api, engine):
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
            log.close()

    def load(self, trial: Settings, key: str, rate: int, duration_s: float) -> LoadResult:
        return run_load(
            f"http://127.0.0.1:{trial.api.port}/v1/decisions", transactions, rate, duration_s,
            {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            processes=self.sizes.client_processes if rate > 1_000 else 1,
            warmup_s=self.sizes.warmup_s, connections=512,
        )  # fmt: skip

    def decisions(self, rate: int, repeats: int) -> list[Result]:
        runs = []
        for index in range(repeats):
            trial = self.trial()
            with self.serving(trial) as (key, _engine):
                self._warm(trial, key)
                self.progress(f"api: {rate:,} req/s, run {index + 1} of {repeats}")
                load = self.load(trial, key, rate, self.sizes.duration_s)
                time.sleep(0.5)  # degraded answers are recorded a few times a second
                since = datetime.fromtimestamp(load.measured_from, timezone.utc)
                runs.append(_Run(load, *_outcome(trial, since)))
        p50, p99, p999 = (
            statistics.median(getattr(r.load, name) for r in runs)
            for name in ("p50_ms", "p99_ms", "p999_ms")
        )
        degraded = statistics.median(r.load.degraded for r in runs)
        errors = sum(r.load.error_count for r in runs)
        lag = max(r.load.send_lag_p99_ms for r in runs)
        return [
            Result(
                f"API decision time at {rate:,} req/s (p50 / p99 / p99.9)",
                p99,
                "ms p99",
                [r.load.p99_ms for r in runs],
                f"medians of {repeats}: p50 {p50:.1f} ms, p99 {p99:.1f} ms, p99.9 {p999:.1f} ms; "
                f"achieved {statistics.median(r.load.achieved_rate for r in runs):,.0f} req/s; "
                f"errors {errors}; client send lag p99 ≤ {lag:.1f} ms; the server's own "
                f"decision time p99 ≤ {max(r.load.server_p99_ms for r in runs):.1f} ms",
            ),
            Result(
                f"degraded answers at {rate:,} req/s",
                degraded,
                "answers",
                [r.load.degraded for r in runs],
                f"of {statistics.median(r.load.sent for r in runs):,.0f} measured requests per "
                f"run (after {self.sizes.warmup_s:.0f} s of warm-up), as their answers said; "
                "recorded in degraded_decisions since the window began (answers to late "
                "warm-up requests included): "
                + ", ".join(f"{r.recorded_degraded:,}" for r in runs),
            ),
        ]

    def warm_services(self, rate: int, duration_s: float) -> None:
        """One run that is not measured, so that the measured ones find the broker warm: its
        JVM compiles its hot paths in its first minutes under load. On a broker just
        started, a first run at 1,000 req/s cost it 0.69 of a core and answered in p50
        1.9 s; the next run, on new topics, 0.44 of a core and 0.33 s (2026-12-06)."""
        trial = self.trial()
        with self.serving(trial) as (key, _engine):
            self._warm(trial, key)
            self.progress(f"api: warming the services up, {rate:,} req/s for {duration_s:.0f} s")
            self.load(trial, key, rate, duration_s)

    def kill(self) -> Result:
        """SIGKILL the engine a third of the way into a run, restart it: every request is
        answered, every transaction recorded exactly once."""
        rate, duration = self.sizes.kill_rate, self.sizes.kill_s
        trial = self.trial()
        env = _env(trial)
        with self.serving(trial) as (key, engine):
            warmed = self._warm(trial, key)
            self.progress(f"api: {rate:,} req/s with the engine killed and restarted")
            from threading import Thread

            outcome: list[LoadResult] = []
            client = Thread(target=lambda: outcome.append(self.load(trial, key, rate, duration)))
            client.start()
            time.sleep(self.sizes.warmup_s + duration / 3)
            engine.send_signal(signal.SIGKILL)
            engine.wait(10)
            log = (self.engines.root / f"api-{trial.engine.group_id}.log").open("ab")
            restarted = _start(["score"], env, log)
            client.join()
            load = outcome[0]
            expected = load.sent + load.warmup_sent + warmed  # every request sent
            deadline = time.monotonic() + 120
            stored = 0
            while time.monotonic() < deadline:
                _degraded, stored = _outcome(trial)
                if stored >= expected:
                    break
                time.sleep(0.5)
            degraded, stored = _outcome(trial)
            restarted.send_signal(signal.SIGTERM)
            restarted.wait(60)
            log.close()
        budget = trial.api.budget_ms
        return Result(
            f"engine kill -9 during {rate:,} req/s: slowest answer", load.max_ms, "ms max",
            [load.max_ms],
            f"{load.ok:,} of {load.sent:,} measured requests answered 200 (errors "
            f"{load.errors or 'none'}), {degraded:,} degraded; slowest {load.max_ms:.0f} ms "
            f"vs budget + 10 = {budget + 10:.0f} ms; p99.9 {load.p999_ms:.1f} ms; the server's "
            f"own decision time (its decision_ms) p99 {load.server_p99_ms:.1f} ms, max "
            f"{load.server_max_ms:.1f} ms; "
            f"{stored:,} of {expected:,} transactions stored, each once (primary key)",
        )  # fmt: skip

    def _warm(self, trial: Settings, key: str) -> int:
        """Until the engine decides (its partitions assigned, its model loaded, its first
        terminal table sealed): an answer in full, or a warm-up transaction stored (on a slow
        machine every answer may miss the budget; the runs count those as degraded);
        returns how many requests that took."""
        import urllib.request

        deadline = time.monotonic() + 120
        for sent, body in enumerate(transactions(99, 100), start=1):
            request = urllib.request.Request(
                f"http://127.0.0.1:{trial.api.port}/v1/decisions", data=body,  # type: ignore[arg-type]
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )  # fmt: skip
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                if not json.loads(response.read())["degraded"]:
                    return sent
            if _outcome(trial)[1] > 0:  # stored: the engine decides, only not within budget
                return sent
            if time.monotonic() > deadline:
                raise RuntimeError("the engine decided nothing within 120 s")
            time.sleep(0.2)
        raise AssertionError("unreachable: the transactions never end")


def _outcome(trial: Settings, since: datetime | None = None) -> tuple[int, int]:
    """Degraded answers recorded (since ``since``), and predictions stored."""
    with connect(trial) as conn:
        degraded = conn.execute(
            "SELECT count(*) FROM degraded_decisions WHERE answered_at >= %s",
            (since or datetime(1970, 1, 1, tzinfo=timezone.utc),),
        ).fetchone()
        stored = conn.execute("SELECT count(*) FROM fraud_predictions").fetchone()
    assert degraded is not None and stored is not None
    return int(str(degraded[0])), int(str(stored[0]))


def _env(trial: Settings) -> dict[str, str]:
    env = _child_env(trial)
    env[env_name("kafka.topics.decisions")] = trial.kafka.topics.decisions
    env[env_name("api.port")] = str(trial.api.port)
    return env


def _start(args: list[str], env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "fraudstream", *args], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def _wait_healthy(trial: Settings, api: subprocess.Popen[bytes]) -> None:
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if api.poll() is not None:
            raise RuntimeError("the API exited at start (see its log in the bench directory)")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{trial.api.port}/v1/health", timeout=2
            ) as response:
                if json.loads(response.read())["status"] == "ok":
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the API did not answer /v1/health within 60 s")


def run(base: Settings, *, quick: bool, progress: Progress) -> list[Result]:
    """The API at each rate (3 runs each, 1 when quick), the streaming path at the same
    rates, and the kill run."""
    sizes = QUICK_API if quick else FULL
    repeats = 1 if quick else 3
    stream_sizes = QUICK if quick else Sizes(0, 0.0, 5.0, sizes.duration_s, sizes.rates, 1)
    engines = EngineBench(
        base, Workload(customers=2_000) if quick else Workload(), stream_sizes, progress
    )
    results: list[Result] = []
    with engines.running():
        bench = ApiBench(engines, sizes, progress)
        if not quick:
            bench.warm_services(sizes.kill_rate, sizes.duration_s)
        for rate in sizes.rates:
            results += bench.decisions(rate, repeats)
        results += engines.latency(repeats)
        results.append(bench.kill())
    return results
