"""`agentmill ui`: the dashboard over the local store, on 127.0.0.1, with a one-time link.

It runs the engine embedded, like `agentmill run`: runs started from its Workflows page
execute in this process, and runs started from other terminals appear live (the pages
read the shared database). The printed link signs the browser in once, as an admin of
the default tenant; after that the session cookie does.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import webbrowser
from pathlib import Path

import uvicorn

from agentmill.cli.exits import EXIT_OK, err
from agentmill.cli.serve_cmd import check_port_free, server_for
from agentmill.settings import Settings

__all__ = ["DEFAULT_PORT", "serve_ui"]

DEFAULT_PORT = 8790
DEFAULT_CONFIG = Path("agentmill.yaml")


def serve_ui(config: Path | None, host: str, port: int | None, open_browser: bool) -> int:
    from agentmill.engine.project import load_checked
    from agentmill.server.app import create_app
    from agentmill.web import OneTimeToken

    settings = Settings()
    if config is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    project = load_checked(config) if config is not None else None
    port = _port(host, port)
    token = OneTimeToken()
    app = create_app(settings, project=project, config_path=config, workers=None,
                     ui_token=token)  # fmt: skip
    url = f"http://{_url_host(host)}:{port}/login?token={token.value}"
    _announce(url, config, settings)
    uvicorn_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=max(int(settings.shutdown_grace), 1),
        lifespan="on",
        log_config=None,
    )
    server = server_for(uvicorn_config, app)
    if open_browser and _has_display():
        _open_when_ready(server, url)
    server.run()
    return EXIT_OK


def _port(host: str, wanted: int | None) -> int:
    """The port asked for (it must be free), else the default one, else any free one."""
    if wanted is not None:
        check_port_free(host, wanted)
        return wanted
    for candidate in (DEFAULT_PORT, 0):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            try:
                probe.bind((host, candidate))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    check_port_free(host, DEFAULT_PORT)  # raises, naming the cause and the fix
    return DEFAULT_PORT


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):  # noqa: S104 - only shown, not bound here
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _announce(url: str, config: Path | None, settings: Settings) -> None:
    console = err()
    where = (settings.database_url and "AGENTMILL_DATABASE_URL") or str(
        settings.home / "agentmill.db"
    )
    console.print(
        f"agentmill dashboard over {where}" + (f", workflows of {config}" if config else "")
    )
    console.print("open this link to sign in (it works once):")
    console.print(url, soft_wrap=True, highlight=False)
    console.print("Ctrl-C stops it.")


def _has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _open_when_ready(server: uvicorn.Server, url: str) -> None:
    def opener() -> None:
        for _ in range(200):
            if server.started:
                webbrowser.open(url)
                return
            threading.Event().wait(0.05)

    threading.Thread(target=opener, name="agentmill-ui-open", daemon=True).start()
