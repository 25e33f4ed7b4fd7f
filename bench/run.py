"""The benchmark run behind `fraudstream bench`: the chosen sections, each written to the report.

Stages (generation, features, scoring) need no services; the engine benchmarks start a private
Kafka broker and PostgreSQL server on free ports and remove them afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from bench import engine as engine_bench
from bench import stages
from bench.report import update_section, update_text_section
from bench.stages import Result
from fraudstream.clock import SystemClock
from fraudstream.config import Settings
from fraudstream.model.registry import Registry

__all__ = ["SECTIONS", "run"]

SECTIONS = ("all", "stages", "engine", "api", "spark", "dashboard", "baseline", "growth")


def run(
    settings: Callable[[], Settings],
    *,
    only: str,
    quick: bool,
    out: Path,
    profile: bool | None,
    progress: Callable[[str], None],
) -> list[Result]:
    """Measure the ``only`` section(s) (one of ``SECTIONS``), update their sections of ``out``
    and return the figures. ``settings`` is called only by the sections that need services;
    ``profile`` None samples the local engine where py-spy may attach to it."""
    if only not in SECTIONS:
        raise ValueError(f"unknown benchmark section {only!r}")
    with _run_resources(settings, only=only, quick=quick, progress=progress) as settings:
        when = SystemClock().now()
        how = "fraudstream bench" + (" --quick" if quick else "") + (f" --only {only}")
        results: list[Result] = []
        if only in ("all", "stages"):
            generation = stages.generation(days=7 if quick else 91, repeats=1 if quick else 3)
            model = stages.feature_and_scoring(
                measured_batches=5 if quick else 200, repeats=1 if quick else 3,
                customers=500 if quick else 5_000, progress=progress,
            )  # fmt: skip
            update_section(out, "simulator", "Simulator", [generation], when, how)
            update_section(out, "features", "Features and scoring", model, when, how)
            results += [generation, *model]
        if only in ("all", "engine"):
            if profile is None:
                from bench.profile import can_sample

                profile = can_sample()
            engine, sampled = engine_bench.run(
                settings(), quick=quick, progress=progress,
                profile_s=(5.0 if quick else 30.0) if profile else None,
            )  # fmt: skip
            update_section(out, "engine", "Local engine, end to end", engine, when, how)
            if sampled is not None:
                title = "Local engine profile (catch-up)"
                update_text_section(out, "profile", title, sampled.markdown(), when, how)
            results += engine
        if only in ("all", "api"):
            from bench import api as api_bench

            decided = api_bench.run(settings(), quick=quick, progress=progress)
            title = "Decision API, beside the streaming path"
            update_section(out, "api", title, decided, when, how)
            results += decided
        if only == "spark" or (only == "all" and importlib.util.find_spec("pyspark")):
            spark, _ = engine_bench.run(settings(), quick=quick, progress=progress, engine="spark")
            title = f"Spark engine ({settings().spark.master}), end to end"
            update_section(out, "spark", title, spark, when, how)
            results += spark
        if only in ("all", "dashboard"):
            from bench import dashboard as dashboard_bench

            rows = 20_000 if quick else 10_000_000
            queries = dashboard_bench.run(
                settings(), rows=rows, repeats=3 if quick else 50, progress=progress
            )
            update_section(out, "dashboard", "Dashboard queries", queries, when, how)
            results += queries
        if only in ("all", "baseline"):
            from bench import baseline

            compared = baseline.run(settings(), quick=quick, progress=progress)
            title = "Baseline: one message at a time, beside the local engine"
            update_section(out, "baseline", title, compared, when, how)
            results += compared
        if only in ("all", "growth"):
            from bench import growth

            grown = growth.run(settings(), quick=quick, progress=progress)
            update_section(out, "growth", "Growth: cards and stored rows", grown, when, how)
            results += grown
        return results


@contextlib.contextmanager
def _run_resources(
    settings: Callable[[], Settings], *, only: str, quick: bool, progress: Callable[[str], None]
) -> Iterator[Callable[[], Settings]]:
    """What the run's sections share, removed after it: a registry of its own (when the
    user's holds no model) and, with ``quick``, one private broker and database."""
    with tempfile.TemporaryDirectory(prefix="fs-models-") as models:
        with_a_model = functools.partial(_with_a_model, settings, Path(models))
        if not quick or only in ("stages", "dashboard"):
            yield with_a_model
            return
        with engine_bench.shared_services(with_a_model(), progress):
            yield with_a_model


def _with_a_model(settings: Callable[[], Settings], models: Path) -> Settings:
    """The settings, their registry replaced by ``models`` (the run's own, deleted after it)
    when it holds no model: the sections then train one first model between them, and none
    lands in the user's registry."""
    base = settings()
    if Registry(base.models_dir).current() is not None:
        return base
    return base.model_copy(update={"model": base.model.model_copy(update={"dir": models})})
