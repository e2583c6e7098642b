"""Settings: the only module that reads environment variables.

Library code receives a `Settings` object; entry points (CLI, server) build it once.
An invalid value is a `UserError` naming each variable and the form it expects
(`AGENTMILL_HEARTBEAT_INTERVAL=abc is not valid: expected a number of seconds, more than 0`);
the values of secret settings are never shown.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

from annotated_types import Ge, Gt
from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from agentmill.errors import UserError

__all__ = [
    "Settings",
    "credential_present",
    "credential_value",
    "granted_environment",
    "is_secret_name",
    "secret_values",
]


@dataclass(frozen=True)
class Unit:
    """What a numeric setting counts, for error messages: `Annotated[float, Unit("seconds")]`."""

    name: str


Seconds = Annotated[float, Unit("seconds")]
Bytes = Annotated[int, Unit("bytes")]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


class Settings(BaseSettings):
    """agentmill settings, read from `AGENTMILL_*` environment variables."""

    # Numbers are finite: `inf` or `1e400` seconds would crash the engine or stop events.
    model_config = SettingsConfigDict(env_prefix="AGENTMILL_", extra="ignore", allow_inf_nan=False)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise UserError(_settings_message(exc)) from None

    home: Path = Field(default=Path(".agentmill"), description="Directory for the embedded store")
    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL for scale-out; the SQLite file in `home` when unset",
    )
    executor_id: str | None = Field(
        default=None, description="Override the per-process executor id (must be unique)"
    )
    max_executor_threads: int = Field(default=16, ge=1)
    heartbeat_interval: Seconds = Field(default=2.0, gt=0)
    event_flush_interval: Seconds = Field(default=0.05, gt=0)
    log_level: Annotated[LogLevel, BeforeValidator(_upper)] = "WARNING"
    log_json: bool = False

    # response cache (opt-in per agent); entries are signed with this secret
    cache_secret: SecretStr | None = Field(
        default=None,
        description="HMAC key for cache entries; generate one with "
        "`python -c 'import secrets; print(secrets.token_hex(32))'`",
    )
    cache_max_bytes: Bytes = Field(
        default=256 * 1024 * 1024, gt=0, description="Size bound of the response cache"
    )

    # command-line agents
    worktrees: Path | None = Field(
        default=None, description="Where step worktrees live; `home`/worktrees when unset"
    )

    # client: with both set, the CLI talks to a server instead of running the engine
    url: str | None = Field(default=None, description="Base URL of an `agentmill serve`")
    api_key: SecretStr | None = Field(default=None, description="API key for `url`")

    # server
    github_webhook_secret: SecretStr | None = Field(
        default=None, description="Secret of the GitHub webhook; deliveries are refused without it"
    )
    github_webhook_tenant: str = Field(
        default="default", description="Tenant that owns runs started by GitHub webhooks"
    )
    webhook_max_bytes: Bytes = Field(default=25 * 1024 * 1024, gt=0)
    max_request_bytes: Bytes = Field(default=1024 * 1024, gt=0)
    rate_limit: Annotated[float, Unit("requests per second")] = Field(
        default=20.0, gt=0, description="Requests per second per API key"
    )
    rate_burst: int = Field(default=60, gt=0, description="Requests a key may make at once")
    max_streams_per_key: int = Field(default=20, gt=0)
    metrics_tenant: str = Field(
        default="default",
        description="/metrics covers every tenant: only admin keys of this tenant may read it",
    )
    shutdown_grace: Seconds = Field(
        default=30.0, ge=0, description="Seconds running steps get to finish on shutdown"
    )
    session_ttl: Seconds = Field(
        default=12 * 3600.0,
        gt=0,
        description="How long a dashboard sign-in lasts before the browser must sign in again",
    )

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        """Refuse a URL the store could not open before anything prints or logs it."""
        if not value:
            return None
        scheme = value.partition("://")[0].partition("+")[0]
        if scheme not in _DATABASE_SCHEMES:
            raise ValueError("unsupported scheme")
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError for a port that is not a number in range
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        _ = parts.port
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) address")
        return value

    @property
    def resolved_database_url(self) -> str:
        """The database both DBOS and agentmill's own tables live in."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'agentmill.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def worktree_root(self) -> Path:
        """The absolute directory holding the git worktrees of command-line steps."""
        return (self.worktrees or self.home / "worktrees").resolve()


_DATABASE_SCHEMES = frozenset({"postgresql", "postgres", "sqlite"})
_HIDDEN_VALUES = frozenset({"database_url", "url"})
"""Settings whose value may hold a password (in the URL), besides the `SecretStr` ones."""
_EXPECTED_TEXT = {
    "database_url": "postgresql://user:password@host:5432/database, "
    "or unset it to use the SQLite file in AGENTMILL_HOME",
    "url": "the http:// or https:// address of an `agentmill serve`, e.g. http://127.0.0.1:8080",
}


def _settings_message(exc: ValidationError) -> str:
    problems: list[str] = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        field = Settings.model_fields.get(name)
        if field is None:
            problems.append(f"invalid settings: {error['msg']}")
            continue
        variable = f"AGENTMILL_{name.upper()}"
        if _hides_value(name, field):
            shown = f"{variable} is not valid (value not shown)"
        else:
            shown = f"{variable}={_shown(error['input'])} is not valid"
        problems.append(f"{shown}: expected {_expected(name, field)}")
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} invalid settings:\n" + "\n".join(f"  - {p}" for p in problems)


def _hides_value(name: str, field: FieldInfo) -> bool:
    if name in _HIDDEN_VALUES or is_secret_name(name):
        return True
    return SecretStr in (field.annotation, *get_args(field.annotation))


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = text if text.isprintable() else repr(text)
    return text if len(text) <= 60 else text[:57] + "..."


def _expected(name: str, field: FieldInfo) -> str:
    """The form a setting takes, e.g. "a number of seconds, more than 0"."""
    if name in _EXPECTED_TEXT:
        return _EXPECTED_TEXT[name]
    kind = field.annotation
    if kind is bool:
        return "true or false (also 1/0, yes/no, on/off)"
    if kind is int or kind is float:
        return _number_form("a whole number" if kind is int else "a number", field)
    if get_origin(kind) is Literal:
        return "one of " + ", ".join(str(choice) for choice in get_args(kind))
    return "text"


def _number_form(text: str, field: FieldInfo) -> str:
    units = [item.name for item in field.metadata if isinstance(item, Unit)]
    text += f" of {units[0]}" if units else ""
    for item in field.metadata:
        if isinstance(item, Gt):
            text += f", more than {item.gt}"
        elif isinstance(item, Ge):
            text += f", {item.ge} or more"
    return text


def credential_present(env_var: str) -> bool:
    """Whether an API key variable is set, without exposing its value."""
    return bool(os.environ.get(env_var))


def granted_environment(names: list[str] | tuple[str, ...]) -> dict[str, str]:
    """The values of the environment variables a command-line agent is granted (those set).

    A name ending in `*` grants every variable that starts with what comes before it
    (`AIDER_*`: AIDER_MODEL, AIDER_EDIT_FORMAT ...)."""
    prefixes = tuple(name[:-1] for name in names if name.endswith("*") and len(name) > 1)
    granted = {name: os.environ[name] for name in names if name in os.environ}
    if prefixes:
        granted.update((k, v) for k, v in os.environ.items() if k.startswith(prefixes))
    return granted


def credential_value(env_var: str) -> str | None:
    """An API key for a provider client; callers must never log or echo it."""
    return os.environ.get(env_var) or None


_SECRET_VARIABLE = re.compile(r"(?:KEY|TOKEN|SECRET|PASSWORD|PASSWD|_PAT|CREDENTIALS?)$")
"""Names of environment variables holding credentials: OPENAI_API_KEY, GITHUB_TOKEN, ..."""


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's name says it holds a credential."""
    return bool(_SECRET_VARIABLE.search(name.upper()))


def secret_values(settings: Settings | None = None) -> list[str]:
    """Values no log line may show: every secret setting (and the database password) of
    `settings`, and the values of credential-like environment variables (`*_API_KEY`,
    `*_TOKEN`, `*_SECRET`, `*_PASSWORD`, ...). For the log redaction filter only."""
    values = [
        value
        for name, value in os.environ.items()
        if value and _SECRET_VARIABLE.search(name.upper())
    ]
    if settings is not None:
        for name in type(settings).model_fields:
            value = getattr(settings, name)
            if isinstance(value, SecretStr) and value.get_secret_value():
                values.append(value.get_secret_value())
        if settings.database_url:
            values.extend(_url_password(settings.database_url))
    return values


def _url_password(url: str) -> list[str]:
    try:
        password = urlsplit(url).password
    except ValueError:  # a malformed URL: its own error is reported where it is used
        return []
    return [password] if password else []
