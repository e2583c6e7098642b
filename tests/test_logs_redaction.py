"""Log redaction of secrets and stripping of control characters, through real loggers."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from agentmill.logs import RedactionFilter, Redactor, configure_logging, strip_controls
from agentmill.settings import Settings, secret_values

KEY_TAIL = "Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0Lm"

SHAPES = [
    (f"sk-{KEY_TAIL}", "sk-[REDACTED]"),
    (f"sk-proj-{KEY_TAIL}_-abc", "sk-proj-[REDACTED]"),
    (f"sk-ant-api03-{KEY_TAIL}-AAAA", "sk-ant-[REDACTED]"),
    (f"AIzaSy{KEY_TAIL}", "AIza[REDACTED]"),
    (f"ghp_{KEY_TAIL}abcd", "ghp_[REDACTED]"),
    (f"gho_{KEY_TAIL}abcd", "gho_[REDACTED]"),
    (f"ghs_{KEY_TAIL}abcd", "ghs_[REDACTED]"),
    (f"github_pat_11ABCDEFG_{KEY_TAIL}", "github_pat_[REDACTED]"),
    ("AKIAIOSFODNN7EXAMPLE", "AKIAIOSF[REDACTED]"),
    (f"amk_0a1b2c3d4e5f_{KEY_TAIL}-x_y", "amk_0a1b2c3d4e5f_[REDACTED]"),
    (f"Authorization: Bearer {KEY_TAIL}.abc", "Authorization: Bearer [REDACTED]"),
    ("authorization=Basic dXNlcjpwYXNzd29yZA==", "authorization=Basic [REDACTED]"),
    ("password=hunter2hunter2", "password=[REDACTED]"),
    ("api_key: 'abc123def456'", "api_key: '[REDACTED]'"),
    ('{"client_secret": "s3cr3t-value"}', '{"client_secret": "[REDACTED]"}'),
    ("OPENAI_API_KEY=whatever-it-is", "OPENAI_API_KEY=[REDACTED]"),
    ("secret=abc&next=1", "secret=[REDACTED]&next=1"),
    (
        "postgresql://postgres:s3cretpw@db.internal:5432/agentmill",
        "postgresql://postgres:[REDACTED]@db.internal:5432/agentmill",
    ),
    (
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "[REDACTED]",
    ),
    (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nAbCd==\n-----END RSA PRIVATE KEY-----",
        "-----BEGIN PRIVATE KEY-----[REDACTED]",
    ),
]

KEPT = [
    "max_tokens=400 input_tokens: 12 output_tokens=3",
    "postgresql://postgres@127.0.0.1:5432/test",
    "the task-runner finished; basic authentication is off",
    "step 'review' failed after 3 attempts: model openai:gpt-4o answered HTTP 503",
]


@pytest.fixture
def root_logging() -> Iterator[None]:
    """configure_logging replaces the root handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _logger(redactor: Redactor, *, single_line: bool = True) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactionFilter(redactor, single_line=single_line))
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(f"agentmill.test.redaction.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


@pytest.mark.parametrize(("raw", "shown"), SHAPES)
def test_every_secret_shape_is_redacted_in_messages_and_args(raw: str, shown: str) -> None:
    logger, stream = _logger(Redactor())
    logger.warning("calling with " + raw)
    logger.warning("calling with %s", raw)
    logger.warning("calling with %(value)s", {"value": raw})
    text = stream.getvalue()
    lines = text.splitlines()
    assert len(lines) == 3
    expected = "WARNING calling with " + shown.replace("\n", "\\n")
    assert lines == [expected] * 3
    assert KEY_TAIL not in text


@pytest.mark.parametrize("text", KEPT)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert Redactor().redact(text) == text


def test_secrets_in_exceptions_are_redacted() -> None:
    logger, stream = _logger(Redactor(["plain-configured-value"]))
    try:
        raise ValueError(f"provider refused sk-ant-{KEY_TAIL} and plain-configured-value")
    except ValueError:
        logger.exception("call failed for token %s", f"ghp_{KEY_TAIL}")
    logger.error("with stack", stack_info=True)
    text = stream.getvalue()
    assert KEY_TAIL not in text
    assert "plain-configured-value" not in text
    assert "ValueError: provider refused sk-ant-[REDACTED] and [REDACTED]" in text
    assert "call failed for token ghp_[REDACTED]" in text


def test_configured_secret_values_are_redacted_exactly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], root_logging: None
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "not-shaped-like-a-key-1")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "opaque-token-value-2")
    settings = Settings(
        api_key=SecretStr("client-key-value-3"),
        cache_secret=SecretStr("cache-secret-value-4"),
        github_webhook_secret=SecretStr("hook-secret-value-5"),
        database_url="postgresql://app:db-password-6@db/agentmill",
    )
    configure_logging("INFO", secrets=secret_values(settings))
    values = [
        "not-shaped-like-a-key-1",
        "opaque-token-value-2",
        "client-key-value-3",
        "cache-secret-value-4",
        "hook-secret-value-5",
        "db-password-6",
    ]
    logging.getLogger("agentmill.test").info("values: %s", " ".join(values))
    err = capsys.readouterr().err
    assert err.startswith("INFO agentmill.test [run=None step=None] values: [REDACTED]")
    assert err.count("[REDACTED]") == len(values)
    assert not any(value in err for value in values)


def test_configure_logging_reads_credential_variables_by_default(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], root_logging: None
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "value-from-the-environment")
    configure_logging("INFO")
    logging.getLogger("agentmill.test").info("key is value-from-the-environment")
    assert "key is [REDACTED]" in capsys.readouterr().err


def test_secret_values_covers_credential_variables_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "gh-token-value")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value")
    monkeypatch.setenv("DB_PASSWORD", "db-password-value")
    monkeypatch.setenv("AGENTMILL_LOG_LEVEL", "INFO")
    values = secret_values()
    assert {"gh-token-value", "aws-secret-value", "db-password-value"} <= set(values)
    assert "INFO" not in values


def test_short_configured_values_are_not_replaced_everywhere() -> None:
    assert Redactor(["abc"]).redact("abc is a short word") == "abc is a short word"


def test_json_logs_redact_messages_and_exceptions(
    capsys: pytest.CaptureFixture[str], root_logging: None
) -> None:
    configure_logging("INFO", as_json=True, secrets=["configured-secret-xyz"])
    logger = logging.getLogger("agentmill.test")
    try:
        raise RuntimeError("configured-secret-xyz leaked into an error")
    except RuntimeError:
        logger.exception("request with %s", f"Bearer {KEY_TAIL}")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["message"] == "request with Bearer [REDACTED]"
    assert "RuntimeError: [REDACTED] leaked into an error" in entry["exception"]
    assert "configured-secret-xyz" not in lines[0]
    assert KEY_TAIL not in lines[0]


# --- control characters --------------------------------------------------------------

FORGERY = (
    "hello\x1b[2J\x1b[31mred\x1b[0m\x07\x00\x9b world\r\nERROR agentmill.engine forged\u2028line"
)


def test_text_logs_strip_controls_and_cannot_be_forged(
    capsys: pytest.CaptureFixture[str], root_logging: None
) -> None:
    configure_logging("INFO")
    logging.getLogger("agentmill.test").warning("prompt: %s", FORGERY)
    err = capsys.readouterr().err
    assert err.count("\n") == 1  # one record, one line
    assert err == (
        "WARNING agentmill.test [run=None step=None] prompt: hellored world"
        "\\nERROR agentmill.engine forged\\u2028line\n"
    )


def test_json_logs_strip_controls(capsys: pytest.CaptureFixture[str], root_logging: None) -> None:
    configure_logging("INFO", as_json=True)
    logging.getLogger("agentmill.test").warning("prompt: %s", FORGERY)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    message = json.loads(lines[0])["message"]
    assert message == "prompt: hellored world\nERROR agentmill.engine forged\u2028line"


def test_traceback_lines_in_text_logs_are_marked_as_continuations() -> None:
    logger, stream = _logger(Redactor())
    try:
        raise ValueError("bad input\nERROR agentmill.engine forged")
    except ValueError:
        logger.exception("failed")
    first, *rest = stream.getvalue().splitlines()
    assert first == "ERROR failed"
    assert rest
    assert all(line.startswith("| ") for line in rest)
    assert "| ERROR agentmill.engine forged" in rest


def test_a_record_is_cleaned_once_by_several_filters() -> None:
    redactor = Redactor()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "a\nb %s", ("c",), None)
    for _ in range(2):
        RedactionFilter(redactor, single_line=True).filter(record)
    assert record.getMessage() == "a\\nb c"


def test_strip_controls() -> None:
    assert strip_controls("a\x1b[1;31mb\x1b]0;title\x07c\td\r\ne\x85\u202ef") == "abc\td\nef"
    assert strip_controls("a\nb\tc\rd", keep_newlines=False) == "ab\tcd"
