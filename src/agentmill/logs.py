"""Run and step ids on every log record, and the entry points' logging set-up.

Library modules only log to named loggers (`agentmill.engine`, `agentmill.store`, ...);
`configure_logging` is called by entry points (the CLI), never by library code.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar

__all__ = ["ContextFilter", "configure_logging", "current_run", "current_step"]

current_run: ContextVar[str | None] = ContextVar("agentmill_run", default=None)
current_step: ContextVar[str | None] = ContextVar("agentmill_step", default=None)


class ContextFilter(logging.Filter):
    """Stamps `run_id` and `step_id` from the current task's context on each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = current_run.get()
        record.step_id = current_step.get()
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": record.created,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "run_id": getattr(record, "run_id", None),
            "step_id": getattr(record, "step_id", None),
        }
        return json.dumps(entry)


def configure_logging(level: str = "WARNING", *, as_json: bool = False) -> None:
    """Log to stderr with run/step ids; JSON lines when `as_json`."""
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    if as_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(levelname)s %(name)s [run=%(run_id)s step=%(step_id)s] %(message)s"
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
