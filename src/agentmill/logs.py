"""Run and step ids on every log record, secrets redacted, and the entry points' set-up.

Library modules only log to named loggers (`agentmill.engine`, `agentmill.store`, ...);
`configure_logging` is called by entry points (the CLI), never by library code. The
handler it installs stamps run/step ids (`ContextFilter`) and passes every record through
`RedactionFilter`: known secret shapes and the exact values of configured secrets are
replaced by `[REDACTED]`, and ANSI escapes and control characters are removed, so logged
user text can neither leak a key nor forge a log line.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from contextvars import ContextVar

__all__ = [
    "ContextFilter",
    "RedactionFilter",
    "Redactor",
    "configure_logging",
    "current_run",
    "current_step",
    "strip_controls",
]

current_run: ContextVar[str | None] = ContextVar("agentmill_run", default=None)
current_step: ContextVar[str | None] = ContextVar("agentmill_step", default=None)

REDACTED = "[REDACTED]"
MIN_SECRET_CHARS = 6
"""Configured values shorter than this are not replaced by value (only by shape)."""

_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        # private key blocks, JSON web tokens
        (
            r"-----BEGIN[A-Z ]{0,30}PRIVATE KEY-----(?:[\s\S]{0,8000}?-----END[A-Z ]{0,30}"
            r"PRIVATE KEY-----|[A-Za-z0-9+/=\s]{0,8000})",
            f"-----BEGIN PRIVATE KEY-----{REDACTED}",
        ),
        (r"\beyJ[\w-]{5,}\.eyJ[\w-]{5,}\.[\w-]{5,}", REDACTED),
        # provider keys: OpenAI (sk-, sk-proj-), Anthropic (sk-ant-), Google, GitHub, AWS, Slack
        (r"\b(sk-(?:ant-|proj-|svcacct-|admin-)?)[A-Za-z0-9_-]{16,}", rf"\1{REDACTED}"),
        (r"\bAIza[0-9A-Za-z_-]{30,}", f"AIza{REDACTED}"),
        (r"\b(gh[pousr]_)[A-Za-z0-9]{20,}", rf"\1{REDACTED}"),
        (r"\bgithub_pat_[A-Za-z0-9_]{20,}", f"github_pat_{REDACTED}"),
        (r"\b((?:AKIA|ASIA)[0-9A-Z]{4})[0-9A-Z]{12}\b", rf"\1{REDACTED}"),
        (r"\b(xox[abprs]-)[A-Za-z0-9-]{10,}", rf"\1{REDACTED}"),
        # agentmill keys: the id is public, the secret is not
        (r"\b(amk_[A-Za-z0-9]{1,32}_)[A-Za-z0-9_-]{6,}", rf"\1{REDACTED}"),
        # credentials in headers, pairs and URLs
        (r"(?i)\b(bearer\s{1,5})[A-Za-z0-9._~+/=-]{8,}", rf"\1{REDACTED}"),
        (
            r"(?i)\b(authorization[\"']?\s{0,5}[:=]\s{0,5}[\"']?(?:basic|digest|token)\s{1,5})"
            r"[A-Za-z0-9._~+/=-]{4,}",
            rf"\1{REDACTED}",
        ),
        (
            r"(?i)((?<![A-Za-z0-9])(?:[A-Za-z0-9]{1,40}[_-])?(?:password|passwd|pwd|secret"
            r"|api[_-]?key|apikey|access[_-]?token|auth[_-]?token|refresh[_-]?token|token"
            r"|private[_-]?key|secret[_-]?key|client[_-]?secret|credentials?)"
            r"[\"']?\s{0,5}[:=]\s{0,5}[\"']?)(?!\[REDACTED\])[^\s\"'&,;]+",
            rf"\1{REDACTED}",
        ),
        (r"\b([a-zA-Z][a-zA-Z0-9+.-]{1,20}://[^\s:/@]{1,256}:)[^\s@/]{1,256}@", rf"\1{REDACTED}@"),
    )
)

_ANSI = re.compile(
    r"\x1b\[[0-?]{0,32}[ -/]{0,8}[@-~]"  # CSI: colours, cursor moves, clear screen
    r"|\x1b\][^\x07\x1b]{0,512}(?:\x07|\x1b\\)?"  # OSC: window titles, hyperlinks
    r"|\x1b[@-_]"  # other two-character escapes
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROLS_AND_BREAKS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_LINE_BREAKS = {"\n": "\\n", "\r": "\\r", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_LINE_BREAK = re.compile("[\n\r\u2028\u2029]")


def strip_controls(text: str, *, keep_newlines: bool = True) -> str:
    """`text` without ANSI escape sequences, C0/C1 control characters or bidi overrides;
    tabs stay, and newlines with `keep_newlines` (a carriage return is removed)."""
    text = _ANSI.sub("", text)
    if keep_newlines:
        return _CONTROLS.sub("", text.replace("\r\n", "\n")).replace("\r", "")
    return _CONTROLS_AND_BREAKS.sub("", text)


class Redactor:
    """Replaces secrets in text: known key shapes, and the exact `secrets` given."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = {value for value in secrets if len(value) >= MIN_SECRET_CHARS}
        self._values = sorted(values, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, REDACTED)
        for pattern, replacement in _SHAPES:
            text = pattern.sub(replacement, text)
        return text


class ContextFilter(logging.Filter):
    """Stamps `run_id` and `step_id` from the current task's context on each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = current_run.get()
        record.step_id = current_step.get()
        return True


class RedactionFilter(logging.Filter):
    """Redacts secrets and strips control characters from a record's message (with its
    arguments formatted in), exception text and stack; a record is cleaned once.

    With `single_line` (text logs) line breaks in the message are escaped and every line
    of a traceback starts with `| `, so user text can never start a line of its own.
    """

    def __init__(self, redactor: Redactor | None = None, *, single_line: bool = False) -> None:
        super().__init__()
        self._redactor = redactor or Redactor()
        self._single_line = single_line

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "agentmill_redacted", False):
            return True
        record.msg = self._message(record)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._block(record.exc_text)
        if record.stack_info:
            record.stack_info = self._block(record.stack_info)
        record.agentmill_redacted = True
        return True

    def _message(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not leak its arguments
            message = f"{record.msg} (the log call's arguments did not fit its format)"
        message = strip_controls(self._redactor.redact(message))
        if self._single_line:
            message = _LINE_BREAK.sub(lambda m: _LINE_BREAKS[m.group()], message)
        return message

    def _block(self, text: str) -> str:
        text = strip_controls(self._redactor.redact(text))
        if self._single_line:
            text = "\n".join(f"| {line}" for line in text.splitlines())
        return text


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
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry)


def configure_logging(
    level: str = "WARNING", *, as_json: bool = False, secrets: Iterable[str] | None = None
) -> None:
    """Log to stderr with run/step ids, secrets redacted; JSON lines when `as_json`.

    `secrets` are exact values never to show (default: `settings.secret_values()`, the
    values of credential-like environment variables).
    """
    if secrets is None:
        from agentmill.settings import secret_values

        secrets = secret_values()
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactionFilter(Redactor(secrets), single_line=not as_json))
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
