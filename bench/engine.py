"""End-to-end benchmarks of the local engine on a private Kafka broker and PostgreSQL server.

Everything runs on this machine, as a user would run it: the broker and the database started
by fraudstream on free ports in a temporary directory, engines as ``fraudstream score``
processes, and the simulator producing with ``acks=all`` from this process. Each trial gets
fresh topics, a fresh database and a fresh consumer group.

- catch-up: a backlog of transactions drained by one engine (its ceiling, producer idle);
- sustained: the highest producer rate at which consumer lag stays flat for a minute;
- latency: Kafka append time to the row stored in PostgreSQL, at fixed open-loop rates.

The traffic is the simulator's accelerated stream (simulated days pass in seconds, labels
arrive, each day's terminal table is sealed as the day turns), from a population large enough
that days do not turn every batch. A stream starts at its population's first day, when no
terminal has a past; every trial's database is therefore given the terminals' daily counts of
the weeks before (``TerminalPast``), as a bank's would hold them. Without them the first model
sent about three transactions in four to review (a terminal with no past is unlike anything
it learned from), and the benchmarks measured explaining and opening cases for most rows.

Latency is measured from the broker's append time rather than the event time, because
accelerated event times are simulated, not wall-clock.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import cast

import numpy as np
import psutil
from confluent_kafka import Consumer, TopicPartition
from psycopg import sql

from bench.profile import Profile, record
from bench.stages import Result
from fraudstream import bus
from fraudstream.clock import SystemClock
from fraudstream.config import CONFIG_FILE_ENV, ENV_PREFIX, Settings, TopicSettings, env_name
from fraudstream.model.bootstrap import ensure_model
from fraudstream.model.registry import Registry
from fraudstream.simulator.generator import SimulationParams, preset
from fraudstream.simulator.population import make_population
from fraudstream.simulator.publish import Publisher, simulate_live
from fraudstream.stack import Stack
from fraudstream.stack.postgres import EmbeddedPostgres
from fraudstream.store import migrations
from fraudstream.store.db import connect
from fraudstream.store.roles import ensure_engine_role

__all__ = ["Drained", "EngineBench", "TerminalPast", "Workload"]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Workload:
    """Who transacts: terminal density as in the Handbook (about 78 within reach of a card)."""

    customers: int = 200_000
    seed: int = 42

    def params(self) -> SimulationParams:
        terminals = self.customers // 2
        radius = 5.0 * (10_000 / terminals) ** 0.5
        return preset(
            "default", n_customers=self.customers, n_terminals=terminals, days=0,
            radius=radius, seed=self.seed,
        )  # fmt: skip


@dataclass(frozen=True)
class Sizes:
    backlog: int
    sustained_s: float
    warmup_s: float
    latency_s: float
    latency_rates: tuple[int, ...]
    max_trials: int
    model_customers: int | None = None  # for a first model when none is promoted
    # The rate a sustained search starts from at most. Quick runs only prove the benchmark
    # runs: a drain of 3,000 rows says little of a rate, and from it Spark's search began at
    # 75,000 tx/s, simulating 300,000 transactions (73 of the test suite's seconds).
    max_sustained_rate: float | None = None


FULL = Sizes(1_000_000, 60.0, 20.0, 30.0, (1_000, 5_000, 20_000), 5)
FULL_SPARK = Sizes(400_000, 60.0, 20.0, 30.0, (1_000, 5_000), 5)
QUICK = Sizes(3_000, 3.0, 1.0, 2.0, (500,), 1, model_customers=1_000, max_sustained_rate=5_000)


class TerminalPast:
    """What a bank's database holds about the workload's terminals before a stream starts:
    their daily transaction counts for the ``DAYS`` days before its first day, drawn
    (Poisson) around each terminal's expected volume in this population."""

    DAYS = 40  # the longest terminal window, 30 days, delayed by 7, and a margin

    def __init__(self, params: SimulationParams) -> None:
        population = make_population(
            params.n_customers, params.n_terminals, params.radius, params.seed
        )
        reach = population.reach_counts()
        share = np.divide(
            population.mean_tx_per_day, reach, out=np.zeros(len(reach)), where=reach > 0
        )  # a customer's volume, spread evenly over the terminals in reach
        self.daily = np.bincount(
            population.reach, weights=np.repeat(share, reach), minlength=population.n_terminals
        )
        self.per_day = float(population.mean_tx_per_day.sum())
        self.seed = params.seed

    def first_day(self, transactions: float) -> date:
        """A day no later than the first of an accelerated stream of ``transactions``
        started now: the simulator starts it far enough back to end around now (its span
        plus a margin); a day earlier still, so that seeded days never overlap the stream's
        own (a gap of a day or two is inside the terminal windows' 7-day delay)."""
        span = timedelta(days=transactions / self.per_day * 1.2 + 2)
        return (datetime.now(timezone.utc) - span).date()

    def write(self, trial: Settings, first_day: date) -> None:
        """The counts of the ``DAYS`` days before ``first_day`` into ``trial``'s database."""
        rng = np.random.default_rng(self.seed)
        terminals = np.flatnonzero(self.daily > 0)
        names = np.array([f"T{t:07d}" for t in terminals], dtype=object)  # simulator's ids
        with connect(trial) as conn:
            for back in range(1, self.DAYS + 1):
                counts = rng.poisson(self.daily[terminals])
                seen = counts > 0
                conn.execute(
                    "INSERT INTO terminal_daily (terminal_id, day, tx_count) "
                    "SELECT t, %s, c FROM unnest(%s::text[], %s::int8[]) AS u(t, c)",
                    (first_day - timedelta(days=back), names[seen].tolist(), counts[seen].tolist()),
                )
            conn.commit()


class EngineBench:
    """A private stack for the duration of a ``with`` block; trials on fresh topics and DBs."""

    def __init__(
        self,
        base: Settings,
        workload: Workload,
        sizes: Sizes,
        progress: Progress,
        engine: str = "local",
    ) -> None:
        self.engine = engine
        self.base = base
        self.workload = workload
        self.sizes = sizes
        self.progress = progress
        self.profile: Profile | None = None  # of the first catch-up, when asked for
        self.params = workload.params()
        self.terminal_past = TerminalPast(self.params)
        self._first_days: dict[str, tuple[TerminalPast, date]] = {}  # by transactions topic
        self._templates: dict[tuple[TerminalPast, date], str] = {}  # seeded, to copy
        self.first_stored_s: list[float] = []  # per latency run: first append → first stored

    @contextmanager
    def running(self) -> Iterator[EngineBench]:
        shared = _SHARED.get()
        if shared is not None:  # the run's services (`shared_services`)
            self.root, self.settings, self.stack = shared
            self._model()
            yield self
            return
        with private_services(self.base, self.progress) as (root, settings, stack):
            self.root, self.settings, self.stack = root, settings, stack
            self._model()
            yield self

    def _model(self) -> None:
        """The configured current model, or (none yet) a first one trained as `up` does, in
        the configured registry: `bench/run.py` points that at a registry of the run's own
        when the user's has no model, so that the sections share one first model."""
        self.settings = self.settings.model_copy(
            update={"model": self.settings.model.model_copy(update={"dir": self.base.models_dir})}
        )
        if Registry(self.base.models_dir).current() is not None:
            return
        self.progress("training a first model (none is promoted yet)")
        settings = self.settings
        if self.sizes.model_customers is not None:
            model = settings.model.model_copy(
                update={"bootstrap_customers": self.sizes.model_customers}
            )
            settings = settings.model_copy(update={"model": model})
        ensure_model(settings, SystemClock(), self.progress)

    # --- trials --------------------------------------------------------------------------

    def catch_up(self, repeats: int = 1, profile_s: float | None = None) -> Result:
        """One engine drains the same backlog ``repeats`` times (a fresh database and group
        each time); the first drain is sampled by py-spy for ``profile_s`` seconds."""
        trial, sent = self.backlog()
        drains = []
        for run in range(repeats):
            if run:
                trial = self.trial(like=trial)
            drains.append(self.drain(trial, sent, profile_s=profile_s if run == 0 else None))
        rates = [drained.rate for drained in drains]
        peak = statistics.median(d.peak_rss for d in drains) / 2**20
        return Result(
            "catch-up: one engine drains a backlog",
            statistics.median(rates),
            "tx/s",
            rates,
            f"{drains[-1].rows:,} transactions, first to last stored row; broker and database "
            f"on this host; CPU-seconds per 1,000 transactions: {cpu_per_1000(drains)}; engine "
            f"peak RSS {peak:,.0f} MiB",
        )

    def backlog(
        self,
        count: int | None = None,
        workload: Workload | None = None,
        partitions: int | None = None,
    ) -> tuple[Settings, int]:
        """A fresh trial whose transactions topic holds ``count`` (default: the sizes')
        transactions of ``workload`` (default: the bench's) in ``partitions`` (default: the
        configured number)."""
        count = count or self.sizes.backlog
        params = workload.params() if workload is not None else None
        past = TerminalPast(params) if params is not None else self.terminal_past
        trial = self._trial(partitions=partitions, past=(past, past.first_day(count)))
        self.progress(f"catch-up: producing a backlog of {count:,}")
        return trial, self._produce(trial, rate=1e7, count=count, params=params).sent

    def trial(self, like: Settings | None = None) -> Settings:
        """A fresh database and consumer group, on ``like``'s topics (its backlog again) or
        on new ones."""
        if like is None:
            return self._trial()
        topics = like.kafka.topics
        return self._trial(topics, like.kafka.partitions, self._first_days.get(topics.transactions))

    def drain(
        self,
        trial: Settings,
        sent: int,
        *,
        limit_s: float | None = None,
        join_s: float = 120.0,
        profile_s: float | None = None,
    ) -> Drained:
        """One engine scores the ``sent`` transactions of ``trial``'s topic from the start (or
        for ``limit_s`` after it has its partitions, given ``join_s`` to get them); with
        ``profile_s``, py-spy samples it for that long after a few seconds of warm-up (kept
        in ``self.profile``)."""
        started = time.monotonic()
        services_before = self.service_cpu()
        with self._engines(trial, 1, join_s) as pids:
            joined_s = time.monotonic() - started
            self.progress("catch-up: one engine draining the backlog")
            if profile_s:
                time.sleep(5)
                self.progress(f"catch-up: sampling the engine with py-spy for {profile_s:.0f} s")
                self.profile = record(pids[0], profile_s)
            if limit_s is None:
                _wait(lambda: _committed(trial) >= sent, 3_600, "the backlog to be scored")
            else:
                end = time.monotonic() + limit_s
                while _committed(trial) < sent and time.monotonic() < end:
                    time.sleep(0.25)
            peak = max(peak_rss(pid) for pid in pids)
            engine_cpu = sum(_cpu_seconds(pid) for pid in pids)
        services = self.service_cpu()
        cpu = {"engine": engine_cpu}
        cpu.update({name: services[name] - services_before[name] for name in services})
        return replace(self.scored(trial, peak, joined_s), cpu_s=cpu)

    def service_cpu(self) -> dict[str, float]:
        """CPU-seconds used so far by the broker and by PostgreSQL (the postmaster, its live
        backends and those that have exited)."""
        found = {}
        for name, service in (("broker", self.stack.broker), ("PostgreSQL", self.stack.database)):
            pid_record = service.record()
            found[name] = 0.0 if pid_record is None else _cpu_seconds(pid_record.pid, tree=True)
        return found

    def scored(self, trial: Settings, peak_rss: int = 0, joined_s: float = 0.0) -> Drained:
        """The rows stored in ``trial``'s database, first to last stored row."""
        rows, seconds = stored_span(trial)
        return Drained(rows, seconds, peak_rss, joined_s)

    def sustained(self, start_rate: float, engines: int = 1) -> Result:
        """Lower the rate from ``start_rate`` until lag stays flat for the measured window."""
        rate = _round_rate(min(start_rate, self.sizes.max_sustained_rate or start_rate))
        tried: list[str] = []
        best = 0.0
        for _ in range(self.sizes.max_trials):
            flat, note = self._hold(rate, engines)
            tried.append(f"{rate:,.0f} {'flat' if flat else 'growing'} ({note})")
            if flat:
                best = rate
                break
            rate = _round_rate(rate * 0.85)
        who = "one engine" if engines == 1 else f"{engines} engine processes"
        return Result(
            f"sustained: lag flat, {who}, producer on this host",
            best,
            "tx/s",
            [best],
            f"{self.sizes.sustained_s:.0f} s held per rate; tried " + "; ".join(tried),
        )

    def _hold(self, rate: float, engines: int = 1) -> tuple[bool, str]:
        duration = self.sizes.warmup_s + self.sizes.sustained_s
        trial = self._live_trial(rate * duration)
        samples: list[tuple[float, int]] = []
        with self._engines(trial, engines):
            self.progress(f"sustained: {rate:,.0f} tx/s for {self.sizes.sustained_s:.0f} s")
            producer = _Background(lambda: self._produce(trial, rate=rate, duration_s=duration))
            started = time.monotonic()
            while producer.alive():
                time.sleep(min(5.0, duration / 12))
                samples.append((time.monotonic() - started, _lag(trial)))
            report = producer.result()
        window = [lag for at, lag in samples if at >= self.sizes.warmup_s]
        if len(window) < 4 or report.achieved_rate < 0.97 * rate:
            return False, f"producer reached {report.achieved_rate:,.0f} tx/s"
        head, tail = statistics.median(window[:3]), statistics.median(window[-3:])
        growth = tail - head
        # Lag saw-tooths by up to a batch; Spark's micro-batches take seconds, so it may
        # swing by a few seconds of input without growing.
        seconds = 3.0 if self.engine == "spark" else 1.0
        allowed = max(rate * seconds, 2 * trial.engine.batch_max_messages)
        return growth <= allowed, f"lag {head:,.0f} → {tail:,.0f}"

    def latency(self, repeats: int = 1) -> list[Result]:
        """Open-loop latency at each rate, ``repeats`` runs each (fresh topics and database);
        the figures are the medians of the runs' percentiles."""
        results = []
        for rate in self.sizes.latency_rates:
            runs = [self._latency_run(rate) for _ in range(repeats)]
            p50, p95, p99 = (statistics.median(run[i] for run in runs) for i in range(3))
            n = sum(run[3] for run in runs)
            first = statistics.median(self.first_stored_s[-repeats:])
            results.append(
                Result(
                    f"latency at {rate:,} tx/s, append → stored (p50 / p95 / p99)",
                    p99,
                    "ms p99",
                    [run[2] for run in runs],
                    f"medians over {repeats} run(s): p50 {p50:.1f} ms, p95 {p95:.1f} ms, "
                    f"p99 {p99:.1f} ms; {n:,} rows; measured from {self.sizes.warmup_s:.0f} s "
                    f"after the first row was stored, {first:.1f} s after the first append "
                    "(the stream's first terminal table)",
                )
            )
        return results

    def _latency_run(self, rate: int) -> tuple[float, float, float, int]:
        """The steady state: the window opens ``warmup_s`` after the engine stored the
        stream's first transaction, not after its first send. A fresh stream's first terminal
        table is built from forty days of counts (seconds at 100,000 terminals), a start-up
        cost every partition waits for once; counted from the first send it was most of the
        tail (p99 of seconds at 200 tx/s). ``first_stored_s`` of the latency results says
        how long it was."""
        longest = _FIRST_STORED_S + self.sizes.warmup_s + self.sizes.latency_s
        trial = self._live_trial(rate * longest)
        with self._engines(trial, 1):
            self.progress(f"latency: {rate:,} tx/s")
            # One stream: a second simulation would repeat the first one's transactions.
            stop = threading.Event()
            producer = _Background(
                lambda: self._produce(trial, rate=rate, duration_s=longest, stop=stop)
            )
            first_row = "SELECT count(*) FROM (SELECT FROM fraud_predictions LIMIT 1) f"
            _wait(
                lambda: _count(trial, first_row) > 0,
                _FIRST_STORED_S, "the engine to store the stream's first transaction",
            )  # fmt: skip
            first_stored = time.time()
            since = first_stored + self.sizes.warmup_s
            while time.time() < since + self.sizes.latency_s and producer.alive():
                time.sleep(0.2)
            stop.set()
            producer.result()
            _wait(partial(_caught_up, trial), 300, "the engine to catch up")
        self.first_stored_s.append(
            _seconds(trial, "SELECT min(stored_at) - min(kafka_time) FROM fraud_predictions")
        )
        return _latency(trial, since)

    # --- plumbing ------------------------------------------------------------------------

    def _live_trial(self, transactions: float) -> Settings:
        """A fresh trial for a stream of about ``transactions`` produced while engines run."""
        past = self.terminal_past
        return self._trial(past=(past, past.first_day(transactions)))

    def _trial(
        self,
        topics: TopicSettings | None = None,
        partitions: int | None = None,
        past: tuple[TerminalPast, date] | None = None,
    ) -> Settings:
        """Fresh topics (or ``topics`` again), database and group; with ``past``, the
        database holds the terminals' counts of the days before the stream's first day."""
        run = uuid.uuid4().hex[:8]
        topics = topics or TopicSettings(
            transactions=f"tx-{run}",
            labels=f"lb-{run}",
            alerts=f"al-{run}",
            dlq=f"dlq-{run}",
            labels_dlq=f"lbdlq-{run}",
        )
        kafka = self.settings.kafka.model_copy(
            update={"topics": topics, "partitions": partitions or self.settings.kafka.partitions}
        )
        bus.ensure_topics(kafka)
        name = f"bench_{run}"
        if past is None:
            self._database(name)
        else:  # a copy of the seeded database: seeding takes a while, a file copy does not
            template = self._templates.get(past)
            if template is None:
                template = self._templates[past] = self._database(f"bench_past_{run}", past)
            with connect(self.settings, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                        sql.Identifier(name), sql.Identifier(template)
                    )
                )
            self._first_days[topics.transactions] = past
        return self.settings.model_copy(
            update={
                "kafka": kafka,
                "database": self.settings.database.model_copy(update={"name": name}),
                "engine": self.settings.engine.model_copy(update={"group_id": f"bench-{run}"}),
            }
        )

    def _database(self, name: str, past: tuple[TerminalPast, date] | None = None) -> str:
        """A new database ``name``, migrated, the engine's role granted; with ``past``, the
        terminals' counts of the days before the stream's first day."""
        with connect(self.settings, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        settings = self.settings.model_copy(
            update={"database": self.settings.database.model_copy(update={"name": name})}
        )
        with connect(settings) as conn:
            migrations.migrate(conn)
            ensure_engine_role(conn, EmbeddedPostgres(settings).engine_password())
        if past is not None:
            terminals, first_day = past
            terminals.write(settings, first_day)
        return name

    def _produce(
        self,
        trial: Settings,
        *,
        rate: float,
        count: int | None = None,
        duration_s: float | None = None,
        params: SimulationParams | None = None,
        stop: threading.Event | None = None,
    ) -> _Report:
        publisher = Publisher(trial.kafka)
        report = simulate_live(
            publisher, params or self.params, rate=rate, clock=SystemClock(), count=count,
            duration_s=duration_s, accelerated=True, stop=stop,
        )  # fmt: skip
        publisher.close()
        return _Report(report.sent, report.achieved_rate)

    @contextmanager
    def _engines(self, trial: Settings, count: int, join_s: float = 120.0) -> Iterator[list[int]]:
        env = _child_env(trial)
        log_file = (self.root / f"engine-{trial.engine.group_id}.log").open("ab")
        command = [sys.executable, "-m", "fraudstream", "score", "--engine", self.engine]
        engines = [
            subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
            for _ in range(count)
        ]
        try:
            ids = [f"{socket.gethostname()}-{engine.pid}" for engine in engines]
            _wait(lambda: _assigned(trial, ids) >= count, join_s, "the engines to join their group")
            yield [engine.pid for engine in engines]
        finally:
            for engine in engines:
                engine.send_signal(signal.SIGTERM)
            for engine in engines:
                try:
                    engine.wait(60)
                except subprocess.TimeoutExpired:
                    engine.kill()
            log_file.close()


@dataclass(frozen=True)
class Drained:
    """A backlog scored: rows stored, first to last stored row, the engine's peak RSS, and
    how long it took to have its partitions (restoring its state)."""

    rows: int
    seconds: float
    peak_rss: int  # bytes
    joined_s: float
    cpu_s: dict[str, float] = field(default_factory=dict)  # per process, over the drain

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


@dataclass(frozen=True)
class _Report:
    sent: int
    achieved_rate: float


class _Background:
    def __init__(self, work: Callable[[], _Report]) -> None:
        self._result: list[_Report] = []
        self._thread = threading.Thread(target=lambda: self._result.append(work()), daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def result(self) -> _Report:
        self._thread.join()
        if not self._result:
            raise RuntimeError("the benchmark producer failed (see the log above)")
        return self._result[0]


_FIRST_STORED_S = 120.0  # at most, for a stream's first row to be stored (its first seal)

_SHARED: ContextVar[tuple[Path, Settings, Stack] | None] = ContextVar(
    "bench_services", default=None
)


@contextmanager
def private_services(base: Settings, progress: Progress) -> Iterator[tuple[Path, Settings, Stack]]:
    """A broker and a server of our own on free ports, in a temporary directory, removed
    afterwards: that directory, their settings and the stack."""
    with tempfile.TemporaryDirectory(prefix="fraudstream-bench-") as root:
        settings = _private(base, Path(root))
        stack = Stack(settings)
        progress("starting a private Kafka broker and PostgreSQL server")
        try:
            stack.up()
            yield Path(root), settings, stack
        finally:
            stack.down(volumes=True)


@contextmanager
def shared_services(base: Settings, progress: Progress) -> Iterator[None]:
    """One private broker and server for every section of a run (`--quick`, where starting
    them would be a good part of each section); each trial still gets its own topics,
    database and consumer group."""
    with private_services(base, progress) as services:
        token = _SHARED.set(services)
        try:
            yield
        finally:
            _SHARED.reset(token)


def _private(base: Settings, root: Path) -> Settings:
    """The base settings on a broker and server of our own: free ports, a temporary state."""
    kafka = type(base.kafka)(
        port=_free_port(), controller_port=_free_port(), version=base.kafka.version,
        heap=base.kafka.heap, partitions=base.kafka.partitions, java=base.kafka.java,
        maven=base.kafka.maven,
    )  # fmt: skip
    database = base.database.model_copy(
        update={"url": None, "host": "127.0.0.1", "port": _free_port(), "name": "fraudstream"}
    )
    return base.model_copy(
        update={
            "state_dir": root / "state",
            "pipeline": False,
            "kafka": kafka,
            "database": database,
            "model": base.model.model_copy(update={"dir": root / "models"}),
        }
    )


def _child_env(settings: Settings) -> dict[str, str]:
    """Exactly these settings for a ``fraudstream`` child process, nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.pop(CONFIG_FILE_ENV, None)  # (it starts with the prefix too; named for the reader)
    values = {
        "state_dir": settings.state_dir,
        "kafka.port": settings.kafka.port,
        "kafka.controller_port": settings.kafka.controller_port,
        "kafka.topics.transactions": settings.kafka.topics.transactions,
        "kafka.topics.labels": settings.kafka.topics.labels,
        "kafka.topics.alerts": settings.kafka.topics.alerts,
        "kafka.topics.dlq": settings.kafka.topics.dlq,
        "kafka.topics.labels_dlq": settings.kafka.topics.labels_dlq,
        "database.port": settings.database.port,
        "database.name": settings.database.name,
        "engine.group_id": settings.engine.group_id,
        "engine.batch_max_messages": settings.engine.batch_max_messages,
        "engine.batch_max_ms": settings.engine.batch_max_ms,
        "engine.card_cache_mib": settings.engine.card_cache_mib,
        "model.dir": settings.models_dir,
    }
    env.update({env_name(path): str(value) for path, value in values.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cpu_per_1000(drains: list[Drained]) -> str:
    """CPU-seconds per 1,000 transactions stored, per process (median over ``drains``):
    the engine's from its start, restore included."""
    names = [name for name in drains[0].cpu_s] if drains and drains[0].cpu_s else []
    return ", ".join(
        f"{name} {statistics.median(d.cpu_s[name] / max(d.rows, 1) * 1000 for d in drains):.3f}"
        for name in names
    )


def _cpu_seconds(pid: int, *, tree: bool = False) -> float:
    """User and system CPU of a process (``tree``: with its children, live and exited)."""
    try:
        process = psutil.Process(pid)
        times = process.cpu_times()
        total = times.user + times.system
        if tree:
            total += times.children_user + times.children_system
            for child in process.children(recursive=True):
                with suppress(psutil.Error):
                    child_times = child.cpu_times()
                    total += child_times.user + child_times.system
        return float(total)
    except psutil.Error:
        return 0.0


def peak_rss(pid: int) -> int:
    """A running process's peak resident set size so far, in bytes (Linux: VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _round_rate(rate: float) -> float:
    step = 1_000 if rate >= 10_000 else 100
    return max(step, round(rate / step) * step)


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"benchmark: timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.25)


def _count(trial: Settings, query: str) -> int:
    with connect(trial) as conn:
        row = conn.execute(query).fetchone()
    value = row[0] if row else None
    return int(str(value)) if value is not None else 0


def _seconds(trial: Settings, query: str) -> float:
    """The interval ``query`` returns, in seconds."""
    with connect(trial) as conn:
        row = conn.execute(query).fetchone()
    interval = cast(timedelta | None, row[0] if row else None)
    return interval.total_seconds() if interval is not None else float("nan")


def _committed(trial: Settings) -> int:
    """Transactions whose results are committed: the local engine's offsets stored with its
    predictions (no row count needed), or, for Spark (offsets in its checkpoint), the rows."""
    offsets = _count(trial, "SELECT sum(next_offset) FROM stream_checkpoints")
    if offsets:
        return offsets
    return _count(
        trial, "SELECT (SELECT count(*) FROM fraud_predictions) + (SELECT count(*) FROM dlq_events)"
    )


def _assigned(trial: Settings, engine_ids: list[str]) -> int:
    """How many of ``engine_ids`` own partitions (earlier engines' rows stay in the table)."""
    with connect(trial) as conn:
        row = conn.execute(
            "SELECT count(*) FROM engine_status "
            "WHERE cardinality(partitions) > 0 AND engine_id = ANY(%s)",
            (engine_ids,),
        ).fetchone()
    return int(str(row[0])) if row else 0


def _lag(trial: Settings) -> int:
    """Messages on the transactions topic not yet committed to PostgreSQL."""
    consumer = Consumer({**trial.kafka.client_config(), "group.id": "bench-watermarks"})
    try:
        topic = trial.kafka.topics.transactions
        high = sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(trial.kafka.partitions)
        )
    finally:
        consumer.close()
    return high - _committed(trial)


def _caught_up(trial: Settings) -> bool:
    return _lag(trial) == 0


def stored_span(trial: Settings, table: str = "fraud_predictions") -> tuple[int, float]:
    """Rows in ``table`` (one with a ``stored_at``), and seconds from the first stored to the
    last: how every drain is measured, the engine's and those beside it."""
    with connect(trial) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT count(*), extract(epoch FROM max(stored_at) - min(stored_at)) FROM {}"
            ).format(sql.Identifier(table))
        ).fetchone()
    assert row is not None
    return int(str(row[0])), max(float(str(row[1] or 0.0)), 1e-3)


def _latency(trial: Settings, since_epoch: float) -> tuple[float, float, float, int]:
    with connect(trial) as conn:
        row = conn.execute(
            "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY ms), count(*) "
            "FROM (SELECT extract(epoch FROM stored_at - kafka_time) * 1000 AS ms "
            "      FROM fraud_predictions WHERE kafka_time >= to_timestamp(%s)) measured",
            (since_epoch,),
        ).fetchone()
    assert row is not None and row[0] is not None, "no rows in the latency window"
    p50, p95, p99 = (float(v) for v in cast(list[float], row[0]))
    return p50, p95, p99, int(str(row[1]))


def run(
    base: Settings, *, quick: bool, progress: Progress, engine: str = "local",
    profile_s: float | None = None,
) -> tuple[list[Result], Profile | None]:  # fmt: skip
    """All end-to-end benchmarks of one engine (quick: tiny sizes that prove they run), and
    the py-spy profile of its first catch-up when ``profile_s`` is given."""
    sizes = QUICK if quick else FULL if engine == "local" else FULL_SPARK
    workload = Workload(customers=2_000) if quick else Workload()
    repeats = 1 if quick else 3
    bench = EngineBench(base, workload, sizes, progress, engine=engine)
    with bench.running():
        catch_up = bench.catch_up(repeats, profile_s)
        results = [catch_up, bench.sustained(0.9 * catch_up.value)]
        if engine == "local":  # Spark's parallelism is its executors, not processes
            single = results[1].value or 0.9 * catch_up.value
            results.append(bench.sustained(1.2 * single, engines=2))
        results += bench.latency(repeats)
    return results, bench.profile
