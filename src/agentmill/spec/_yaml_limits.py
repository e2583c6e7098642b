"""A YAML loader that refuses documents too costly to use: deep nesting, too many values,
alias bombs.

PyYAML composes nested collections recursively and keeps an alias as a reference to its
anchor's node, so a small file can stand for an enormous value ("billion laughs": nine
aliases of nine aliases of ... nine strings) that everything after the parser would walk.
The composer below counts, while composing, the levels of collections on every path
(aliases included) and the values of the document, an alias counting as all the values it
repeats, and stops at the first excess. Loading costs time and memory per value (about
20 µs of CPU and 1 KB with PyYAML), so the count bounds both.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["MAX_DEPTH", "MAX_VALUES", "LimitedLoader", "YamlLimitExceeded"]

MAX_DEPTH = 100
"""Levels of mappings and lists a config document may nest (the top-level mapping is 1)."""
MAX_VALUES = 100_000
"""Values (mappings, lists, scalars) a document may hold, an alias counting as all it repeats."""


class YamlLimitExceeded(Exception):
    """A document past one of the limits; `line` is 1-based."""

    def __init__(self, message: str, hint: str, line: int) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.line = line


class LimitedLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` refusing documents past `MAX_DEPTH` or `MAX_VALUES`."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._open_anchors: set[str] = set()
        self._values = 0
        self._measures: dict[int, tuple[int, int]] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)  # the anchor's node, or raises
            if node is not None:
                self._check_alias(event, node)
            return node
        self._count(1, event.start_mark.line + 1, alias=False)
        collection = isinstance(event, yaml.CollectionStartEvent)
        anchor: str | None = getattr(event, "anchor", None)
        if collection:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise _too_deep(event.start_mark.line + 1)
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= collection
            self._open_anchors.discard(anchor or "")

    def _check_alias(self, event: yaml.AliasEvent, node: yaml.Node) -> None:
        line = event.start_mark.line + 1
        if event.anchor in self._open_anchors:
            raise YamlLimitExceeded(
                f"alias *{event.anchor} is used inside the value it names",
                "a config cannot contain itself: copy the values instead",
                line,
            )
        values, height = self._measure(node)
        if self._depth + height > MAX_DEPTH:
            raise _too_deep(line)
        self._count(values, line, alias=True)

    def _count(self, values: int, line: int, *, alias: bool) -> None:
        self._values += values
        if self._values <= MAX_VALUES:
            return
        if alias:
            hint = (
                "each alias repeats its anchor's whole value: alias smaller values, or fewer times"
            )
        else:
            hint = "keep data out of the config: pass it as an input (--input name=@file)"
        raise YamlLimitExceeded(
            f"the file holds more than {MAX_VALUES:,} values "
            "(mappings, lists and scalars; an alias counts as all the values it repeats)",
            hint,
            line,
        )

    def _measure(self, node: yaml.Node) -> tuple[int, int]:
        """(values, levels of collections) of a composed node, aliases expanded. Recursion
        stays within `MAX_DEPTH`: every node composed so far is within it."""
        known = self._measures.get(id(node))
        if known is not None:
            return known
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)  # pyright: ignore[reportUnknownArgumentType]
        elif isinstance(node, yaml.MappingNode):
            pairs: list[tuple[yaml.Node, yaml.Node]] = node.value  # pyright: ignore[reportUnknownMemberType]
            children = [part for pair in pairs for part in pair]
        measures = [self._measure(child) for child in children]
        values = 1 + sum(count for count, _ in measures)
        height = (
            0 if isinstance(node, yaml.ScalarNode) else 1 + max((h for _, h in measures), default=0)
        )
        self._measures[id(node)] = (values, height)
        return values, height


def _too_deep(line: int) -> YamlLimitExceeded:
    return YamlLimitExceeded(
        f"nested too deeply: more than {MAX_DEPTH} levels of mappings and lists",
        "a config file needs only a few levels: pass deep data as an input instead",
        line,
    )
