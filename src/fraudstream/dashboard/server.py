"""How the dashboard is served: Streamlit running ``app.py`` with fixed production options,
behind a small entry point (``python -m fraudstream.dashboard.server``) that first serves the
process's Prometheus metrics, so that they answer before anyone opens a page."""

from __future__ import annotations

import sys
from importlib import resources

from fraudstream.config import DashboardSettings

__all__ = ["streamlit_command"]


def streamlit_command(settings: DashboardSettings) -> list[str]:
    """The command line that serves the dashboard on dashboard.host:dashboard.port, headless,
    without usage statistics, file watching or developer menus."""
    app_script = resources.files("fraudstream.dashboard").joinpath("app.py")
    return [
        sys.executable, "-m", "fraudstream.dashboard.server", "run", str(app_script),
        "--server.address", settings.host, "--server.port", str(settings.port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--global.developmentMode", "false", "--server.fileWatcherType", "none",
        "--client.toolbarMode", "viewer",
    ]  # fmt: skip


def _main() -> None:
    """Metrics first (settings from the environment `fraudstream dashboard` passed on), then
    Streamlit's own command line with these arguments, as `streamlit run` would."""
    import logging

    from streamlit.web.cli import main as streamlit

    from fraudstream.config import load_settings
    from fraudstream.telemetry import serve_metrics

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    serve_metrics(load_settings().metrics, "dashboard")
    streamlit(prog_name="streamlit")


if __name__ == "__main__":
    _main()
