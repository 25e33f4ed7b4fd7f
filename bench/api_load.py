"""Open-loop HTTP load for the decision API benchmark.

Requests are sent on a fixed schedule (``rate`` per second), whether or not earlier ones have
been answered, and each latency runs from the request's *scheduled* send time to its response.
A closed loop (send, wait, send) slows down with the server and so hides its stalls
(coordinated omission); here a stalled server or a late client shows up in the percentiles.

One Python process can send only so many requests a second: on the 2-core benchmark machine,
against a server that costs next to nothing, one client process (aiohttp on uvloop, ~130 µs of
CPU per request) keeps its schedule up to about 5,000 req/s, falls behind at 6,000 and
collapses at 7,000, where two processes still keep it. ``run_load`` spreads the schedule over
several processes and merges their samples. ``LoadResult.send_lag_p99_ms`` says
whether the client kept to its schedule: when it grows, the client, not the server, is the limit.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue as queue_module
import re
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier
from typing import Any, TypeAlias

import aiohttp
import numpy as np

__all__ = [
    "Body",
    "BodySource",
    "LoadResult",
    "Samples",
    "merge",
    "run_load",
    "sample_open_loop",
    "summarize",
]

Body: TypeAlias = "bytes | tuple[bytes, Mapping[str, str]]"
"""A request body, or a body with headers of its own (laid over the common ones)."""

BodySource: TypeAlias = "Callable[[int, int], Iterable[Body]]"
"""Called as ``source(worker, workers)`` in each client process: it must be picklable (a
module-level function) and should yield bodies that differ between workers."""


@dataclass
class Samples:
    """The raw observations of one client process: kept raw so processes can be merged
    before percentiles are taken (percentiles of percentiles would be wrong)."""

    latencies_ms: list[float] = field(default_factory=list)  # of 2xx responses
    server_ms: list[float] = field(default_factory=list)  # their own ``decision_ms``, if any
    degraded: int = 0  # 2xx answers marked ``"degraded": true``
    send_lags_ms: list[float] = field(default_factory=list)  # when started minus when due
    errors: Counter[str] = field(default_factory=Counter)  # status code or exception name
    sent: int = 0  # in the measured window (after the warm-up)
    warmup_sent: int = 0
    elapsed_s: float = 0.0  # measured window start to its last response
    client_cpu_s: float = 0.0  # CPU the client process used, warm-up included
    measured_from: float = 0.0  # epoch seconds: when the recorded window began


@dataclass(frozen=True)
class LoadResult:
    """What one open-loop run measured, in milliseconds where a unit is not named."""

    target_rate: float
    duration_s: float
    sent: int
    ok: int
    errors: dict[str, int]
    achieved_rate: float  # 2xx responses per second of the measured window
    p50_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    send_lag_p99_ms: float
    send_lag_max_ms: float
    # The server's own time per answer (its ``decision_ms``: body decoded → answer), NaN when
    # the answers do not carry it; beside the client's, it tells a late handler from a
    # request that waited in an overloaded machine before the handler ran.
    server_p99_ms: float
    server_max_ms: float
    degraded: int  # of the measured requests' answers, those marked degraded
    warmup_sent: int
    client_cpu_s: float
    measured_from: float  # epoch seconds: when the recorded window (after warm-up) began
    processes: int = 1

    @property
    def error_count(self) -> int:
        """All failed requests, whatever the reason."""
        return sum(self.errors.values())


def summarize(samples: Samples, rate: float, duration_s: float, processes: int = 1) -> LoadResult:
    """Percentiles and rates of (possibly merged) samples."""
    lat = np.asarray(samples.latencies_ms, dtype=np.float64)
    lag = np.asarray(samples.send_lags_ms, dtype=np.float64)
    server = np.asarray(samples.server_ms, dtype=np.float64)
    p50, p95, p99, p999 = np.percentile(lat, [50, 95, 99, 99.9]) if lat.size else [np.nan] * 4
    elapsed = max(samples.elapsed_s, duration_s)
    return LoadResult(
        target_rate=rate, duration_s=duration_s, sent=samples.sent, ok=int(lat.size),
        errors=dict(samples.errors), achieved_rate=lat.size / elapsed,
        p50_ms=float(p50), p95_ms=float(p95), p99_ms=float(p99), p999_ms=float(p999),
        max_ms=float(lat.max()) if lat.size else float("nan"),
        send_lag_p99_ms=float(np.percentile(lag, 99)) if lag.size else float("nan"),
        send_lag_max_ms=float(lag.max()) if lag.size else float("nan"),
        server_p99_ms=float(np.percentile(server, 99)) if server.size else float("nan"),
        server_max_ms=float(server.max()) if server.size else float("nan"),
        degraded=samples.degraded, warmup_sent=samples.warmup_sent,
        client_cpu_s=samples.client_cpu_s, processes=processes, measured_from=samples.measured_from,
    )  # fmt: skip


def merge(parts: Iterable[Samples]) -> Samples:
    """One sample set from the samples of several client processes running side by side."""
    out = Samples()
    for part in parts:
        out.latencies_ms += part.latencies_ms
        out.server_ms += part.server_ms
        out.degraded += part.degraded
        out.send_lags_ms += part.send_lags_ms
        out.errors.update(part.errors)
        out.sent += part.sent
        out.warmup_sent += part.warmup_sent
        out.elapsed_s = max(out.elapsed_s, part.elapsed_s)
        out.client_cpu_s += part.client_cpu_s
        out.measured_from = max(out.measured_from, part.measured_from)
    return out


_SERVER_MS = re.compile(rb'"decision_ms":\s*([0-9.eE+-]+)')
_DEGRADED = re.compile(rb'"degraded":\s*true')
_MIN_SLEEP_S = 0.001  # uvloop's timers count whole milliseconds: a shorter sleep spins a core


def _pause(until_due_s: float) -> float:
    """How long the scheduler sleeps: not at all when behind (just let the started requests
    run), else at least a timer tick, so the requests that fall due meanwhile go out together
    (a send lag of up to ~1 ms, shown in ``send_lag_*`` and charged to their latency)."""
    return 0.0 if until_due_s <= 0 else max(_MIN_SLEEP_S, until_due_s)


def _split(body: Body) -> tuple[bytes, Mapping[str, str] | None]:
    return (body, None) if isinstance(body, bytes) else body


async def _send(
    session: aiohttp.ClientSession, url: str, body: Body, due: float, record: bool, out: Samples
) -> None:
    """One request; its latency is charged from ``due``, the time it was scheduled for."""
    data, headers = _split(body)
    try:
        async with session.post(url, data=data, headers=headers) as resp:
            answer = await resp.read()
            status = resp.status
    except Exception as exc:  # a refused or reset connection or a timeout is a result
        if record:
            out.errors[type(exc).__name__] += 1
        return
    if not record:
        return
    if 200 <= status < 300:
        out.latencies_ms.append((time.monotonic() - due) * 1000.0)
        server = _SERVER_MS.search(answer)
        if server is not None:
            out.server_ms.append(float(server.group(1)))
        out.degraded += _DEGRADED.search(answer) is not None
    else:
        out.errors[str(status)] += 1


def _session(
    headers: Mapping[str, str] | None, connections: int, timeout_s: float
) -> aiohttp.ClientSession:
    """A keep-alive pool: connections are opened once and reused, as a gateway would."""
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    return aiohttp.ClientSession(
        connector=connector, headers=dict(headers or {}), auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=timeout_s), skip_auto_headers=("User-Agent",),
    )  # fmt: skip


async def _schedule(
    send: Callable[[Body, float, bool], Coroutine[Any, Any, None]],
    bodies: Iterator[Body],
    start: float,
    rate: float,
    total: int,
    warmup: int,
    out: Samples,
) -> set[asyncio.Task[None]]:
    """Start request ``i`` at ``start + i / rate``: every request due by now, then a short sleep.
    Sending in bursts of the due ones keeps the schedule without one timer per request."""
    tasks: set[asyncio.Task[None]] = set()
    interval = 1.0 / rate
    i = 0
    while i < total:
        now = time.monotonic()
        while i < total and start + i * interval <= now:
            due = start + i * interval
            record = i >= warmup
            if record:
                out.send_lags_ms.append((now - due) * 1000.0)
            task = asyncio.create_task(send(next(bodies), due, record))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if i < total:
            await asyncio.sleep(_pause(start + i * interval - time.monotonic()))
    return tasks


async def sample_open_loop(
    url: str,
    bodies: Iterable[Body],
    rate: float,
    duration_s: float,
    headers: Mapping[str, str] | None = None,
    *,
    warmup_s: float = 0.0,
    connections: int = 256,
    timeout_s: float = 10.0,
    phase_s: float = 0.0,
    ready: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> Samples:
    """The raw samples of one open-loop run (see ``run_load``). ``phase_s`` shifts this
    process's schedule so that several processes interleave; ``ready`` is awaited once the
    pool exists, just before the schedule starts (the processes' common start line)."""
    cpu0 = time.process_time()
    out = Samples()
    warmup, total = round(rate * warmup_s), round(rate * (warmup_s + duration_s))
    async with _session(headers, connections, timeout_s) as session:
        if ready is not None:
            await ready()
        start = time.monotonic() + phase_s
        out.measured_from = time.time() + phase_s + warmup_s

        async def send(body: Body, due: float, record: bool) -> None:
            await _send(session, url, body, due, record, out)

        pending = await _schedule(send, iter(bodies), start, rate, total, warmup, out)
        if pending:  # aiohttp's own timeout should end each of them before this one
            _, unfinished = await asyncio.wait(pending, timeout=timeout_s + 1.0)
            for task in unfinished:
                task.cancel()
            out.errors.update({"unfinished": len(unfinished)} if unfinished else {})
        out.elapsed_s = time.monotonic() - (start + warmup_s)
    out.sent, out.warmup_sent = total - warmup, warmup
    out.client_cpu_s = time.process_time() - cpu0
    return out


def _run_loop(main: Coroutine[Any, Any, Samples]) -> Samples:
    """uvloop where it is installed: it roughly halves the client's CPU per request."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


@dataclass(frozen=True)
class _Plan:
    """One run as the client processes receive it (picklable: it crosses into them)."""

    url: str
    source: BodySource
    rate: float  # of all the processes together
    duration_s: float
    headers: Mapping[str, str] | None
    warmup_s: float
    connections: int  # of all the processes together
    timeout_s: float
    workers: int


def _run_share(worker: int, plan: _Plan, barrier: Barrier | None) -> Samples:
    """One process's share of the plan: its part of the rate and of the connections, offset
    by ``worker / rate`` so that the processes' sends interleave."""

    async def ready() -> None:
        if barrier is not None:
            await asyncio.get_running_loop().run_in_executor(None, barrier.wait)

    main = sample_open_loop(
        plan.url, plan.source(worker, plan.workers), plan.rate / plan.workers, plan.duration_s,
        plan.headers, warmup_s=plan.warmup_s, timeout_s=plan.timeout_s,
        connections=max(1, plan.connections // plan.workers), phase_s=worker / plan.rate,
        ready=ready,
    )  # fmt: skip
    return _run_loop(main)


def _worker(worker: int, plan: _Plan, barrier: Barrier, queue: Any) -> None:
    queue.put(_run_share(worker, plan, barrier))


def run_load(
    url: str,
    source: BodySource,
    rate: float,
    duration_s: float,
    headers: Mapping[str, str] | None = None,
    *,
    processes: int = 1,
    warmup_s: float = 0.0,
    connections: int = 256,
    timeout_s: float = 10.0,
) -> LoadResult:
    """POST ``source``'s bodies to ``url`` at ``rate`` per second for ``warmup_s`` (not
    recorded, but on the same warm connections) and then ``duration_s``, spread over
    ``processes`` client processes (1: in this process, on uvloop), each with
    ``rate / processes`` and ``connections / processes``; their latency samples are merged
    before the percentiles are taken. ``source`` is called once in each
    process, as ``source(worker, processes)``."""
    n = max(1, processes)
    plan = _Plan(url, source, rate, duration_s, headers, warmup_s, connections, timeout_s, n)
    if n == 1:
        return summarize(_run_share(0, plan, None), rate, duration_s)
    ctx = mp.get_context("spawn")  # no copy of the caller's event loop or threads
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(i, plan, barrier, queue)) for i in range(n)]
    for proc in procs:
        proc.start()
    try:
        parts = _collect(procs, queue, deadline=time.monotonic() + warmup_s + duration_s + 60.0)
    finally:
        for proc in procs:
            proc.join(timeout=5.0)
            if proc.is_alive():
                proc.kill()
    return summarize(merge(parts), rate, duration_s, n)


def _collect(procs: list[Any], queue: Any, deadline: float) -> list[Samples]:
    """Each process's samples; a process that died without sending them fails the run at
    once instead of leaving the caller waiting (for example: ``source`` not picklable)."""
    parts: list[Samples] = []
    while len(parts) < len(procs):
        try:
            parts.append(queue.get(timeout=0.5))
        except queue_module.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"client processes failed (exit codes {dead})") from None
    return parts
