"""`agentmill serve`: the HTTP API with an embedded worker, under uvicorn."""

from __future__ import annotations

import socket
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI

from agentmill.cli.exits import EXIT_OK, err
from agentmill.errors import InputError
from agentmill.settings import Settings

__all__ = ["check_port_free", "serve", "server_for"]


def serve(config: Path | None, host: str, port: int, workers: int) -> int:
    """Check everything that can be checked, then serve until SIGTERM or Ctrl-C."""
    from agentmill.engine.project import load_checked
    from agentmill.server.app import create_app

    settings = Settings()
    project = load_checked(config) if config is not None else None
    check_port_free(host, port)
    app = create_app(settings, project=project, config_path=config, workers=workers)
    role = f"{workers} worker slot(s)" if workers else "API only, no worker"
    err().print(f"agentmill serving on http://{host}:{port} ({role}); docs at /docs")
    uvicorn_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=max(int(settings.shutdown_grace), 1),
        lifespan="on",
        log_config=None,  # uvicorn's loggers go through ours: ids stamped, secrets redacted
    )
    server_for(uvicorn_config, app).run()
    return EXIT_OK


def server_for(config: uvicorn.Config, app: FastAPI) -> uvicorn.Server:
    """uvicorn's server, telling the app it is stopping before connections are drained,
    so open event streams end (clients reconnect later) instead of holding up shutdown."""

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            services = getattr(app.state, "services", None)
            if services is not None:
                services.shutting_down.set()
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal after a graceful stop; a clean stop exits 0.
            self._captured_signals.clear()

    return Server(config)


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise InputError(
                f"cannot listen on {host}:{port} ({exc.strerror}); "
                "pick another port with --port or stop what uses it"
            ) from None
