"""`fraudstream bench`: runs the benchmark harness, the ``bench/`` folder of a source checkout
(it is not part of the installed package)."""

from __future__ import annotations

import importlib
import importlib.util
import signal
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer

import fraudstream
from fraudstream.cli._options import err, fail, print_step, settings_of


def _checkout_harness() -> Path | None:
    """``bench/`` of the source checkout this fraudstream runs from (src layout, installed
    editable or run in place), if it does."""
    package = Path(fraudstream.__file__).resolve().parent
    if package.parent.name != "src":
        return None
    return package.parent.parent / "bench"


def _load_harness(bench_dir: Path | None) -> ModuleType:
    """The harness's ``bench.run`` module, imported as the package ``bench``; exits 2 when
    there is none (fraudstream installed from a wheel)."""
    folder = bench_dir or _checkout_harness()
    if folder is None or not (folder / "run.py").is_file():
        missing = f" ({folder / 'run.py'} does not exist)" if folder is not None else ""
        fail(
            "benchmarks run from a source checkout of fraudstream: this installation has no "
            f"benchmark harness{missing}; install the checkout (pip install -e .) or pass "
            "--bench-dir CHECKOUT/bench",
            2,
        )
    loaded = [Path(path).resolve() for path in getattr(sys.modules.get("bench"), "__path__", [])]
    if folder.resolve() not in loaded:
        for name in [name for name in sys.modules if name.split(".")[0] == "bench"]:
            del sys.modules[name]  # another package of that name: not ours
        spec = importlib.util.spec_from_file_location(
            "bench", folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        assert spec is not None and spec.loader is not None
        package = importlib.util.module_from_spec(spec)
        sys.modules["bench"] = package
        spec.loader.exec_module(package)
    # Last on the path, so that it shadows nothing: the load client's worker processes
    # (started with "spawn", which passes sys.path on) import bench.api_load from there.
    if str(folder.parent) not in sys.path:
        sys.path.append(str(folder.parent))
    return importlib.import_module("bench.run")


def _interrupt(_signal: int, _frame: object) -> None:
    raise KeyboardInterrupt


def bench(
    ctx: typer.Context,
    quick: Annotated[
        bool, typer.Option(help="Tiny sizes: proves the benchmarks run (tests).")
    ] = False,
    only: Annotated[
        str,
        typer.Option(
            help="all | stages (no services) | engine (local, end to end) | api (the decision "
            "API under open-loop load, beside the streaming path) | spark "
            "(the Spark engine end to end; in all when pyspark is installed) | dashboard "
            "(its queries over 10 million stored predictions) | baseline (a per-message "
            "consumer beside the local engine) | growth (more cards, more stored rows)."
        ),
    ] = "all",
    out: Annotated[Path, typer.Option(help="Report to update.")] = Path("docs/benchmarks.md"),
    profile: Annotated[
        bool | None,
        typer.Option(
            help="Sample the local engine with py-spy during its first catch-up and add the "
            "profile to the report (default: when py-spy is installed, as with the dev extra, "
            "and may attach to the engine: as root or with kernel.yama.ptrace_scope 0)."
        ),
    ] = None,
    bench_dir: Annotated[
        Path | None,
        typer.Option(
            help="The benchmark harness: the bench/ folder of a fraudstream source checkout "
            "(default: that of the checkout fraudstream is installed from)."
        ),
    ] = None,
) -> None:
    """Measure the system on this machine and update the benchmark report.

    Stages (generation, features, scoring) need no services; the engine benchmarks start a
    private Kafka broker and PostgreSQL server on free ports and remove them afterwards.
    """
    harness = _load_harness(bench_dir)
    if only not in harness.SECTIONS:
        fail(f"--only must be one of {', '.join(harness.SECTIONS)}, not {only!r}", 2)
    started = time.monotonic()
    # SIGTERM ends the run as Ctrl-C does: through the harness's `finally`s, which stop the
    # private broker, database and engines it started (a plain SIGTERM would leave them).
    signal.signal(signal.SIGTERM, _interrupt)
    with err.status("benchmarking") as status:

        def progress(message: str) -> None:
            # A line per step, terminal or not (a log shows where the time went); the spinner
            # says what is happening now.
            print_step(started, message, width=7)
            status.update(message)

        results = harness.run(
            lambda: settings_of(ctx), only=only, quick=quick, out=out, profile=profile,
            progress=progress,
        )  # fmt: skip
    for result in results:
        typer.echo(f"{result.name}: {result.value:,.1f} {result.unit}  {result.note}")
    typer.echo(f"updated {out}")
