"""How the dashboard is served: Streamlit running ``app.py`` with fixed production options."""

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
        sys.executable, "-m", "streamlit", "run", str(app_script),
        "--server.address", settings.host, "--server.port", str(settings.port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--global.developmentMode", "false", "--server.fileWatcherType", "none",
        "--client.toolbarMode", "viewer",
    ]  # fmt: skip
