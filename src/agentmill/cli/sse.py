"""Reading a `text/event-stream` (Server-Sent Events) line by line.

Follows the WHATWG parsing rules: `data` lines join with newlines, `:` lines are comments
(the server's keepalives), a blank line dispatches, and the last `id` persists across
frames so a client knows where to resume (`Last-Event-ID`). `retry` is not used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SseFrame", "SseParser"]


@dataclass(frozen=True, kw_only=True)
class SseFrame:
    """One dispatched event of an event stream."""

    event: str
    data: str
    id: str
    """The stream's last event id when this frame was dispatched (what to resume after)."""


@dataclass
class SseParser:
    """Line-by-line parser of `text/event-stream` (the WHATWG algorithm, minus `retry`)."""

    last_event_id: str = ""
    _event: str = ""
    _data: list[str] = field(default_factory=list[str])

    def feed(self, line: str) -> SseFrame | None:
        """Take one line (without its line ending); a frame when a blank line ends one."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment, e.g. the server's keepalive
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        return None

    def _dispatch(self) -> SseFrame | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return SseFrame(event=event or "message", data="\n".join(data), id=self.last_event_id)
