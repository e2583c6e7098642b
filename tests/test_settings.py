"""Settings: invalid values are user errors naming the variable, the form, never a secret."""

from __future__ import annotations

import pytest

from agentmill.errors import UserError
from agentmill.settings import Settings


def test_each_invalid_setting_is_named_with_its_expected_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTMILL_EVENT_FLUSH_INTERVAL", "soon")
    monkeypatch.setenv("AGENTMILL_RATE_BURST", "-3")
    monkeypatch.setenv("AGENTMILL_SHUTDOWN_GRACE", "-1")
    with pytest.raises(UserError) as info:
        Settings()
    assert str(info.value).splitlines() == [
        "3 invalid settings:",
        "  - AGENTMILL_EVENT_FLUSH_INTERVAL=soon is not valid: "
        "expected a number of seconds, more than 0",
        "  - AGENTMILL_RATE_BURST=-3 is not valid: expected a whole number, more than 0",
        "  - AGENTMILL_SHUTDOWN_GRACE=-1 is not valid: expected a number of seconds, 0 or more",
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AGENTMILL_DATABASE_URL", "postgresql://app:s3cret-pw@db:54x2/agentmill"),
        ("AGENTMILL_DATABASE_URL", "mysql://app:s3cret-pw@db/agentmill"),
        ("AGENTMILL_URL", "ftp://app:s3cret-pw@agentmill.internal"),
        ("AGENTMILL_URL", "notaurl-s3cret-pw"),
    ],
)
def test_a_secret_setting_is_named_without_its_value(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(UserError) as info:
        Settings()
    assert "s3cret-pw" not in str(info.value)
    assert str(info.value).startswith(f"{name} is not valid (value not shown): expected ")


def test_a_long_or_unprintable_value_is_shown_shortened(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTMILL_LOG_JSON", "\x1b[31m" + "y" * 100)
    with pytest.raises(UserError) as info:
        Settings()
    message = str(info.value)
    assert "\x1b" not in message  # shown as its repr, cut to 60 characters
    assert message == (
        "AGENTMILL_LOG_JSON='\\x1b[31m" + "y" * 48 + "... is not valid: "
        "expected true or false (also 1/0, yes/no, on/off)"
    )


def test_valid_values_are_accepted_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTMILL_LOG_LEVEL", "debug")
    monkeypatch.setenv("AGENTMILL_DATABASE_URL", "postgresql+psycopg://u:p@127.0.0.1:5432/db")
    settings = Settings()
    assert settings.log_level == "DEBUG"
    assert settings.database_url == "postgresql+psycopg://u:p@127.0.0.1:5432/db"


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400", "Infinity"])
def test_a_number_setting_is_finite(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """An infinite heartbeat would crash the engine (`round(inf)`), an infinite flush
    interval would never send an event: not a number a setting may take."""
    monkeypatch.setenv("AGENTMILL_HEARTBEAT_INTERVAL", value)
    with pytest.raises(UserError) as info:
        Settings()
    assert str(info.value).endswith(" is not valid: expected a number of seconds, more than 0")
