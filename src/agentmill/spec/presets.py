"""Presets of command-line agents, as data: how to call a tool and read what it prints.

The built-in presets (claude, codex, gemini, aider, generic) live in
`agents/cli/presets.yaml`; a config file's `presets:` adds tools or changes fields of a
built-in one (`presets: {claude: {concurrency: 2}}`). A tool that prints plain text or JSON
lines needs no code: only a preset.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DEFAULT_PRESET", "Credentials", "EventRule", "PresetSpec"]

DEFAULT_PRESET = "generic"
"""The preset of a `runtime: cli` agent that names none: plain text, its own `command`."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class EventRule(_Strict):
    """How one kind of JSON line becomes events: lines whose fields equal `match` give the
    values at the paths below. Paths are dotted keys; `[*]` takes every list element and
    `[key=value]` the elements whose `key` equals `value`: `message.content[type=text].text`.
    """

    match: dict[str, str | bool | int] = Field(default_factory=dict)
    text: str | None = None
    tool: str | None = None
    session: str | None = None
    result: str | None = None
    cost_usd: str | None = None
    input_tokens: str | None = None
    output_tokens: str | None = None
    error: str | None = None


class Credentials(_Strict):
    """How a tool authenticates: any one of these variables set (and granted), or any one
    of these files present, is enough. Checked before a run starts; values never shown."""

    env: list[str] = Field(default_factory=list, description="Variables holding a key")
    files: list[str] = Field(
        default_factory=list,
        description="Files a login leaves: `~/...` in the home directory, `$NAME/...` under"
        " the directory a granted variable names",
    )
    login: str = Field(default="", description="How to give the tool credentials")


class PresetSpec(_Strict):
    """How to run one command-line tool and parse its output."""

    description: str = ""
    install: str = Field(default="", description="How to install the tool (shown when missing)")
    command: list[str] = Field(
        default_factory=list, description="Argument templates: {{ prompt }}, {{ workdir }} ..."
    )
    resume: list[str] | None = Field(
        default=None, description="Arguments used instead when resuming {{ session_id }}"
    )
    stdin: str | None = Field(default=None, description="Template written to the tool's stdin")
    output: Literal["text", "jsonl"] = "text"
    events: list[EventRule] = Field(default_factory=list)
    version: list[str] = Field(default_factory=list, description="Arguments printing a version")
    concurrency: int | None = Field(
        default=None, gt=0, description="Processes of this tool at once, per worker"
    )
    env: list[str] = Field(
        default_factory=list,
        description="Variables the tool is granted by default; `PREFIX_*` grants every"
        " variable whose name starts with PREFIX_",
    )
    credentials: Credentials | None = Field(
        default=None, description="What the tool needs to authenticate (null: not checked)"
    )
    ignore: list[str] = Field(
        default_factory=list,
        description="Files the tool keeps for itself (gitignore-style patterns, e.g."
        " `.aider*`): never in the step's diff or commit",
    )
