"""Which ASGI framework and server should carry ``POST /v1/decisions``: measured, not guessed.

Every candidate serves the same tiny endpoint (raw body, decoded by msgspec into a small
Struct, a ~10-field JSON decision encoded by msgspec), in one server process on 127.0.0.1,
and is driven by the open-loop client of ``bench.api_load`` at fixed rates. The frameworks are
imported only inside their app factories: litestar and granian are not project dependencies
(and no ``from __future__ import annotations``: the frameworks read the handlers' annotations).
The machine is shared: each run waits for it to be nearly idle, and a run during which other
processes used more than 0.3 cores is done again (the table shows what others still used).

    .venv/bin/python -m bench.api_frameworks              # all candidates, 3 runs per rate
    .venv/bin/python -m bench.api_frameworks --client     # what the client alone can send
"""

import argparse
import asyncio
import contextlib
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import msgspec
import psutil

from bench.api_load import Body, LoadResult, run_load

__all__ = ["CANDIDATES", "Candidate", "decide", "main", "transactions"]

PATH = "/v1/decisions"
HEADERS = {"Content-Type": "application/json"}
_PY = sys.executable


class Tx(msgspec.Struct):
    """The part of a card transaction that the benchmark endpoint reads."""

    tx_id: str
    card_id: str
    amount: float
    event_time: datetime


_decode = msgspec.json.Decoder(Tx).decode
_encode = msgspec.json.Encoder().encode


def decide(body: bytes) -> bytes:
    """The endpoint's work, identical for every framework: decode, a stand-in decision, encode."""
    tx = _decode(body)
    score = min(1.0, tx.amount / 10_000.0)
    hit = score > 0.5
    return _encode({
        "tx_id": tx.tx_id, "decision": "review" if hit else "approve", "score": score,
        "reasons": ["amount_high"] if hit else [], "rule_hits": ["R-AMOUNT"] if hit else [],
        "model_version": "xgb-2024-01", "rules_version": "rules-7", "degraded": False,
        "stale": [], "decided_at": datetime.now(timezone.utc),
    })  # fmt: skip


def transactions(worker: int, workers: int) -> Iterator[Body]:
    """Distinct transactions without end, with ids that differ between client processes."""
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    i = 0
    while True:
        yield msgspec.json.encode({
            "tx_id": f"tx-{worker}-{i}", "card_id": f"card-{(i * workers + worker) % 50_000}",
            "amount": float((i * 7919) % 12_000) + 0.5,
            "event_time": (start + timedelta(milliseconds=i)).isoformat(),
        })  # fmt: skip
        i += 1


# --- the apps: factories, so that a server imports only the framework it serves --------------


def asgi_app() -> Callable[..., Any]:
    """Bare ASGI, no framework: the floor that the server alone costs."""
    headers = [(b"content-type", b"application/json")]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        out = decide(body)
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [*headers, (b"content-length", str(len(out)).encode())],
        }
        await send(start)
        await send({"type": "http.response.body", "body": out})

    return app


def starlette_app() -> Any:
    """Plain Starlette: what FastAPI adds on top of it shows in the difference."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def decisions(request: Request) -> Response:
        return Response(decide(await request.body()), media_type="application/json")

    return Starlette(routes=[Route(PATH, decisions, methods=["POST"])])


def fastapi_app() -> Any:
    """FastAPI with a raw Request and Response, so msgspec (not pydantic) does the JSON."""
    from fastapi import FastAPI, Request, Response

    app = FastAPI()

    @app.post(PATH)
    async def decisions(request: Request) -> Response:
        return Response(decide(await request.body()), media_type="application/json")

    return app


def litestar_app() -> Any:
    """Litestar with a raw Request and Response (its default status for POST is 201)."""
    from litestar import Litestar, Request, Response, post

    @post(PATH, status_code=200)  # type: ignore[untyped-decorator]  # litestar: installed for this bench only
    async def decisions(request: Request[Any, Any, Any]) -> Response[bytes]:
        return Response(decide(await request.body()), media_type="application/json")

    return Litestar(route_handlers=[decisions], openapi_config=None)


# --- servers -----------------------------------------------------------------------------------


def _uvicorn(factory: str) -> Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        return [_PY, "-m", "uvicorn", "--factory", f"bench.api_frameworks:{factory}",
                "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop",
                "--http", "httptools", "--no-access-log", "--log-level", "warning"]  # fmt: skip

    return argv


def _granian(factory: str) -> Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        return [_PY, "-m", "granian", "--interface", "asgi", "--factory", "--host", "127.0.0.1",
                "--port", str(port), "--workers", "1", "--loop", "uvloop", "--no-access-log",
                "--log-level", "warning", f"bench.api_frameworks:{factory}"]  # fmt: skip

    return argv


@dataclass(frozen=True)
class Candidate:
    """A framework on a server, started as its own process."""

    name: str
    argv: Callable[[int], list[str]]


DEFAULT = ("asgi-uvicorn", "starlette-uvicorn", "fastapi-uvicorn", "litestar-uvicorn",
           "fastapi-granian")  # fmt: skip
CANDIDATES = (
    Candidate("asgi-uvicorn", _uvicorn("asgi_app")),
    Candidate("starlette-uvicorn", _uvicorn("starlette_app")),
    Candidate("fastapi-uvicorn", _uvicorn("fastapi_app")),
    Candidate("litestar-uvicorn", _uvicorn("litestar_app")),
    Candidate("asgi-granian", _granian("asgi_app")),
    Candidate("fastapi-granian", _granian("fastapi_app")),
    Candidate("litestar-granian", _granian("litestar_app")),
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _check(url: str) -> None:
    """One request must come back 200 with the decision for the transaction sent."""
    body = next(iter(transactions(0, 1)))
    assert isinstance(body, bytes)
    request = urllib.request.Request(url, data=body, headers=HEADERS, method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=2) as resp:  # noqa: S310 (http://127.0.0.1 only)
        answer = msgspec.json.decode(resp.read())
        if resp.status != 200 or answer["tx_id"] != "tx-0-0" or len(answer) != 10:
            raise RuntimeError(f"{url}: unexpected answer {resp.status} {answer}")


@contextlib.contextmanager
def serving(argv: Sequence[str], url: str, wait_s: float = 20.0) -> Iterator[psutil.Process]:
    """The server running and answering until the block ends; then it is stopped."""
    proc = subprocess.Popen(argv, cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                _check(url)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield psutil.Process(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _cpu_s(proc: psutil.Process) -> float:
    """User plus system CPU of the server and its workers (granian serves from a child)."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = p.cpu_times()
            total += times.user + times.system
    return total


@dataclass(frozen=True)
class Run:
    """One load run, the server CPU it cost and how busy the rest of the machine was."""

    load: LoadResult
    server_cpu_us: float  # per request, warm-up included
    others_cores: float  # CPU used by neither server nor client, in cores: other people's work


def _busy_s() -> float:
    """CPU seconds the whole machine has been busy (steal included: a neighbour's VM)."""
    times = psutil.cpu_times()._asdict()  # guest time is counted in user time already
    idle = ("idle", "iowait", "guest", "guest_nice")
    return float(sum(v for k, v in times.items() if k not in idle))


def _wait_quiet(quiet_cores: float, max_wait_s: float = 60.0) -> None:
    """Wait (a while, not forever) until the machine is nearly idle between runs."""
    deadline = time.monotonic() + max_wait_s
    while True:
        busy0 = _busy_s()
        time.sleep(1.0)
        busy = _busy_s() - busy0
        if busy <= quiet_cores or time.monotonic() > deadline:
            return
        _say(f"  the machine is busy ({busy:.2f} cores): waiting")
        time.sleep(4.0)


def _measure_once(
    server: psutil.Process, url: str, rate: float, duration_s: float, warmup_s: float, procs: int
) -> Run:
    busy0, cpu0, wall0 = _busy_s(), _cpu_s(server), time.monotonic()
    load = run_load(
        url, transactions, rate, duration_s, HEADERS, processes=procs, warmup_s=warmup_s
    )
    cpu, wall = _cpu_s(server) - cpu0, time.monotonic() - wall0
    others = (_busy_s() - busy0 - cpu - load.client_cpu_s) / wall
    return Run(load, cpu / max(1, load.sent + load.warmup_sent) * 1e6, max(0.0, others))


def measure(
    server: psutil.Process,
    url: str,
    rate: float,
    duration_s: float,
    warmup_s: float,
    procs: int,
    *,
    quiet_cores: float = 0.3,
    tries: int = 3,
) -> Run:
    """One open-loop run against a running server, with the server's CPU around it. The
    machine has 2 cores shared with other work: a run during which others used more than
    ``quiet_cores`` is done again (up to ``tries`` times; the last one counts regardless)."""
    for attempt in range(1, tries + 1):
        _wait_quiet(quiet_cores)
        run = _measure_once(server, url, rate, duration_s, warmup_s, procs)
        if run.others_cores <= quiet_cores or attempt == tries:
            return run
        _say(f"  others used {run.others_cores:.2f} cores during the run at {rate}/s: again")
    raise AssertionError("unreachable")


def sustainable(run: Run, p99_limit_ms: float) -> bool:
    """Kept up: no errors, nearly the asked rate, and a p99 that has not exploded."""
    load = run.load
    return (
        load.error_count == 0
        and load.achieved_rate >= 0.97 * load.target_rate
        and load.p99_ms <= p99_limit_ms
    )


# --- the trivial server for measuring the client alone ----------------------------------------

_CANNED = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class _Trivial(asyncio.Protocol):
    """Answers each HTTP/1.1 request with a canned 200 and nothing else: all the CPU that a
    run costs is then the client's."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport, self.buf = cast(asyncio.Transport, transport), b""  # uvloop's: no subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end].lower()
            at = head.find(b"content-length:")
            size = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self.buf) < end + 4 + size:
                return
            self.buf = self.buf[end + 4 + size :]
            self.transport.write(_CANNED)


def trivial_server(port: int) -> None:
    """Serve the canned answer on 127.0.0.1:``port`` until killed (a child process)."""
    import uvloop

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(_Trivial, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


# --- the report -----------------------------------------------------------------------------------


def _median(runs: Sequence[Run], pick: Callable[[Run], float]) -> float:
    return statistics.median(pick(r) for r in runs)


def _row(name: str, rate: int, runs: Sequence[Run]) -> str:
    errors = sum(r.load.error_count for r in runs)
    return (
        f"| {name} | {rate:,} | {_median(runs, lambda r: r.load.achieved_rate):,.0f} "
        f"| {_median(runs, lambda r: r.load.p50_ms):.2f} "
        f"| {_median(runs, lambda r: r.load.p99_ms):.2f} "
        f"| {_median(runs, lambda r: r.load.p999_ms):.1f} "
        f"| {_median(runs, lambda r: r.load.max_ms):.1f} | {errors} "
        f"| {_median(runs, lambda r: r.server_cpu_us):.0f} "
        f"| {_median(runs, lambda r: r.load.send_lag_p99_ms):.2f} "
        f"| {max(r.others_cores for r in runs):.2f} |"
    )


TABLE_HEAD = (
    "| candidate | rate/s | achieved/s | p50 ms | p99 ms | p99.9 ms | max ms | errors "
    "| server CPU µs/req | client send lag p99 ms | others' cores (max) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _max_rate(
    server: psutil.Process, url: str, ramp: Sequence[int], procs: int, p99_limit_ms: float
) -> tuple[int, str]:
    """The highest step of ``ramp`` sustained (5 s runs), and how the next step failed. A step
    that fails gets a second run: one stall of the shared machine should not end the ramp."""
    best = 0
    for rate in ramp:
        for _ in range(2):
            run = measure(server, url, rate, 5.0, 1.0, procs)
            _say(_row("(ramp)", rate, [run]))
            if sustainable(run, p99_limit_ms):
                break
        else:
            load = run.load
            return best, (
                f"{rate:,}/s: {load.achieved_rate:,.0f}/s achieved, p50 {load.p50_ms:.0f} ms, "
                f"p99 {load.p99_ms:.0f} ms, {load.error_count} errors"
            )
        best = rate
    return best, "(end of the ramp)"


def compare(
    candidates: Sequence[Candidate],
    rates: Sequence[int],
    ramp: Sequence[int],
    runs: int,
    duration_s: float,
    warmup_s: float,
    procs: int,
    ramp_procs: int,
    p99_limit_ms: float,
) -> list[str]:
    """For each candidate: ``runs`` runs at each of ``rates`` (a row of medians each, with
    ``procs`` client processes), then the highest of ``ramp`` that it sustains (with
    ``ramp_procs``: one client process falls behind near 5,000 req/s before the servers do)."""
    rows, limits = (
        [TABLE_HEAD],
        ["", "| candidate | max sustainable rate/s | next step |", "|---|---|---|"],
    )
    for cand in candidates:
        port = _free_port()
        url = f"http://127.0.0.1:{port}{PATH}"
        with serving(cand.argv(port), url) as server:
            for rate in rates:
                done = [
                    measure(server, url, rate, duration_s, warmup_s, procs) for _ in range(runs)
                ]
                rows.append(_row(cand.name, rate, done))
                _say(rows[-1])
            best, failed = _max_rate(server, url, ramp, ramp_procs, p99_limit_ms)
            limits.append(f"| {cand.name} | {best:,} | {failed} |")
            _say(limits[-1])
    return rows + limits


def client_alone(rates: Sequence[int], procs: Sequence[int], duration_s: float) -> list[str]:
    """What the client can send against a server that costs (almost) nothing."""
    import multiprocessing as mp

    port = _free_port()
    url = f"http://127.0.0.1:{port}{PATH}"
    server = mp.get_context("spawn").Process(target=trivial_server, args=(port,), daemon=True)
    server.start()
    rows = [
        "| client processes | rate/s | achieved/s | p50 ms | p99 ms | max ms | errors "
        "| send lag p99 ms | client CPU µs/req | server CPU µs/req |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    try:
        time.sleep(1.0)
        assert server.pid is not None
        sproc = psutil.Process(server.pid)
        for n in procs:
            for rate in rates:
                run = measure(sproc, url, rate, duration_s, 1.0, n)
                load = run.load
                client_us = load.client_cpu_s / max(1, load.sent + load.warmup_sent) * 1e6
                rows.append(
                    f"| {n} | {rate:,} | {load.achieved_rate:,.0f} | {load.p50_ms:.2f} "
                    f"| {load.p99_ms:.2f} | {load.max_ms:.1f} | {load.error_count} "
                    f"| {load.send_lag_p99_ms:.2f} | {client_us:.0f} | {run.server_cpu_us:.0f} |"
                )
                _say(rows[-1])
    finally:
        server.terminate()
        server.join()
    return rows


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the options, run the comparison (or the client-alone check) and print the table."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.api_frameworks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    names = [c.name for c in CANDIDATES]
    parser.add_argument("--only", default=",".join(DEFAULT), help=f"comma-separated, of {names}")
    parser.add_argument("--rates", default="1000,3000", help="req/s measured with --runs runs")
    parser.add_argument("--ramp", default="2000,3000,4000,4500,5000,5500,6000,7000",
                        help="req/s steps (5 s each) to find the highest sustained")  # fmt: skip
    parser.add_argument("--runs", type=int, default=3, help="runs per rate (medians reported)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each run")
    parser.add_argument("--procs", type=int, default=1, help="client processes for --rates")
    parser.add_argument("--ramp-procs", type=int, default=2, help="client processes for --ramp")
    parser.add_argument("--p99-limit-ms", type=float, default=50.0, help="ramp: exploded above")
    parser.add_argument("--client", action="store_true", help="measure the client alone")
    parser.add_argument("--client-procs", default="1,2", help="--client: processes to try")
    parser.add_argument("--out", type=Path, help="also write the table(s) here")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the server is stopped too
    if args.client:
        lines = client_alone(_ints(args.ramp), _ints(args.client_procs), args.duration)
    else:
        chosen = [c for c in CANDIDATES if c.name in args.only.split(",")]
        lines = compare(
            chosen,
            _ints(args.rates),
            _ints(args.ramp),
            args.runs,
            args.duration,
            args.warmup,
            args.procs,
            args.ramp_procs,
            args.p99_limit_ms,
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
