"""Serving the decision API with uvicorn (httptools and uvloop: docs/adr/0007)."""

from __future__ import annotations

from typing import Any

import uvicorn

from fraudstream.config import ApiSettings, Settings, env_name, load_settings

__all__ = ["app_from_environment", "listening_problem", "serve"]


def listening_problem(api: ApiSettings) -> str | None:
    """Why the API may not listen where it is told to, or None."""
    if api.loopback or api.tls or api.insecure_beyond_loopback:
        return None
    return (
        f"api.host is {api.host}, not loopback: set api.tls_certfile and api.tls_keyfile "
        f"({env_name('api.tls_certfile')}, {env_name('api.tls_keyfile')}), or "
        f"api.insecure_beyond_loopback=true when a TLS-terminating proxy is in front"
    )


def app_from_environment() -> Any:
    """The application for each worker process (``api.workers`` > 1): settings from the
    environment the CLI passed on."""
    from fraudstream.api.app import create_app

    return create_app(load_settings())


def serve(settings: Settings) -> None:
    api = settings.api
    problem = listening_problem(api)
    if problem:
        raise ValueError(problem)
    tls = {}
    if api.tls:
        tls = {"ssl_certfile": str(api.tls_certfile), "ssl_keyfile": str(api.tls_keyfile)}
    common = {
        "host": api.host, "port": api.port, "loop": "uvloop", "http": "httptools",
        "access_log": False, "log_level": api.log_level,
        "timeout_graceful_shutdown": 10, "proxy_headers": False, **tls,
    }  # fmt: skip
    if api.workers == 1:
        from fraudstream.api.app import create_app
        from fraudstream.telemetry import serve_metrics

        serve_metrics(settings.metrics, "api")
        uvicorn.run(create_app(settings), **common)  # type: ignore[arg-type]
    else:
        from fraudstream.telemetry import serve_worker_metrics

        directory = settings.state_dir / "run" / "api-metrics"
        serve_worker_metrics(settings.metrics, "api", directory.absolute())
        uvicorn.run(
            "fraudstream.api.server:app_from_environment", factory=True, workers=api.workers,
            **common,  # type: ignore[arg-type]
        )  # fmt: skip
