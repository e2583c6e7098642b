"""A few helpers to build SVG markup in which every value is escaped.

Elements are built from a tag, a mapping of attributes and children: attribute values and
plain-string children are always escaped with markupsafe; only `Markup` built here passes
through. Presentation lives in static/svg.css (classes), never in `style=` attributes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from markupsafe import Markup, escape

__all__ = ["Attr", "element", "fmt", "truncate"]

Attr = str | int | float | None
"""An attribute value; None leaves the attribute out."""

_ELLIPSIS = "\u2026"


def fmt(value: float) -> str:
    """A coordinate written compactly: `12`, `12.5`, never `12.000000001` (nor `nan`)."""
    if not math.isfinite(value):
        return "0"
    rounded = round(value, 2)
    if rounded == int(rounded):
        return str(int(rounded))
    return f"{rounded:.2f}".rstrip("0")


def _attr_text(value: str | int | float) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return fmt(value)
    return value


def element(tag: str, attrs: Mapping[str, Attr] | None = None, *children: Markup | str) -> Markup:
    """`<tag a="v">children</tag>`, self-closing when there are no children."""
    parts = [
        f' {name}="{escape(_attr_text(value))}"'
        for name, value in (attrs or {}).items()
        if value is not None
    ]
    opening = f"<{tag}{''.join(parts)}"
    if not children:
        return Markup(f"{opening}/>")  # noqa: S704 - names are ours, values escaped above
    body = "".join(str(escape(child)) for child in children)
    return Markup(f"{opening}>{body}</{tag}>")  # noqa: S704 - children escaped above


def truncate(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, ending with an ellipsis when cut."""
    if len(text) <= limit:
        return text
    return text[: max(limit - 1, 0)] + _ELLIPSIS
