"""Jinja2 templates of prompts, conditions and fan-outs: rendering, evaluation, references.

Templates run in a `SandboxedEnvironment` with `StrictUndefined`: a config file cannot run
code, and a misspelled variable fails loudly instead of rendering as an empty string.
The rendering context of a step is::

    {"inputs": {...}, "steps": {step_id: {"output": ..., "skipped": bool}},
     "item": ..., "index": int}    # item and index only inside a `foreach` step
"""

from __future__ import annotations

import functools
from collections.abc import Generator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from jinja2 import (
    StrictUndefined,
    Template,
    TemplateError,
    TemplateSyntaxError,
    Undefined,
    UndefinedError,
    meta,
    nodes,
)
from jinja2.environment import TemplateExpression
from jinja2.sandbox import SandboxedEnvironment

from agentmill.errors import TemplateRenderError

__all__ = [
    "Reference",
    "evaluate",
    "is_truthy",
    "references",
    "render",
    "template_env",
]

_FALSE_STRINGS = frozenset({"false", "0", "no", ""})


@dataclass(frozen=True, kw_only=True)
class Reference:
    """A variable a template reads from its context, e.g. `steps['sign-off'].output`."""

    root: str
    """The top-level name: `inputs`, `steps`, `item`, `index`, or an unknown one."""
    path: tuple[str | int, ...] = ()
    """Constant attribute and item lookups after the root, e.g. `("sign-off", "output")`."""
    lineno: int = 1
    """1-based line within the template."""

    def __str__(self) -> str:
        text = self.root
        for part in self.path:
            text += f".{part}" if isinstance(part, str) and part.isidentifier() else f"[{part!r}]"
        return text


class _Environment(SandboxedEnvironment):
    """Dots read dict keys before dict methods, so `steps.update.output` or
    `steps.plan.output.items` reach the data rather than `dict.update` / `dict.items`."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


@functools.cache
def template_env() -> SandboxedEnvironment:
    """The one environment every agentmill template is compiled in."""
    return _Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


@contextmanager
def _nesting_checked() -> Generator[None]:
    """Jinja parses recursively and compiles to Python, which limits nesting too: a
    template nested thousands of blocks deep is a syntax error, not a crash."""
    try:
        yield
    except RecursionError:
        raise TemplateSyntaxError(_too_deep("more levels than Jinja can parse"), 1) from None
    except SyntaxError as exc:  # in the generated Python: "too many levels of indentation"
        raise TemplateSyntaxError(_too_deep(f"Python: {exc.msg}"), 1) from None


def _too_deep(reason: str) -> str:
    return (
        f"the template nests too deeply ({reason}); "
        "use fewer nested blocks ({% if %}, {% for %}), parentheses or filters"
    )


@functools.lru_cache(maxsize=1024)
def _compiled(source: str) -> Template:
    with _nesting_checked():
        return template_env().from_string(source)


@functools.lru_cache(maxsize=1024)
def _compiled_expression(source: str) -> TemplateExpression:
    with _nesting_checked():
        return template_env().compile_expression(source, undefined_to_none=False)


def _parsed(source: str) -> nodes.Template:
    with _nesting_checked():
        return template_env().parse(source)


def render(template: str, context: Mapping[str, Any]) -> str:
    """Render a template to text; raises TemplateRenderError naming what was missing."""
    try:
        return _compiled(template).render(dict(context))
    except UndefinedError as exc:
        raise _undefined(template, context, str(exc)) from exc
    except TemplateSyntaxError as exc:
        message = f"template syntax error on line {exc.lineno}: {exc.message}"
        raise TemplateRenderError(message) from exc
    except RecursionError:
        raise TemplateRenderError(_RECURSES) from None
    except (TemplateError, TypeError, ValueError, ArithmeticError) as exc:
        raise TemplateRenderError(f"template failed: {exc}") from exc


_RECURSES = "template failed: it recurses too deeply (a macro that calls itself?)"


def evaluate(template: str, context: Mapping[str, Any]) -> Any:
    """The value of a `when` or `foreach` template.

    A template that is exactly one `{{ expression }}` gives the expression's native value
    (a list stays a list, a bool stays a bool); anything else gives the rendered text.
    """
    expression = _single_expression(template)
    if expression is None:
        return render(template, context)
    try:
        value = _compiled_expression(expression)(dict(context))
    except UndefinedError as exc:
        raise _undefined(template, context, str(exc)) from exc
    except RecursionError:
        raise TemplateRenderError(_RECURSES) from None
    except (TemplateError, TypeError, ValueError, ArithmeticError) as exc:
        raise TemplateRenderError(f"template failed: {exc}") from exc
    if isinstance(value, Undefined):
        raise _undefined(template, context, value._undefined_message)
    return value


def is_truthy(value: Any) -> bool:
    """Whether a `when` value lets its step run: "false", "0", "no" and "" (any case) are false."""
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE_STRINGS
    return bool(value)


def references(template: str) -> list[Reference]:
    """The context variables a template reads, in order; locals (`{% set %}`, loops) excluded.

    Raises `jinja2.TemplateSyntaxError` (with `lineno`) for a template that does not
    compile, including unknown filters and tests.
    """
    env = template_env()
    ast = _parsed(template)
    _compiled(template)
    roots = meta.find_undeclared_variables(ast) - set(env.globals)
    found: list[Reference] = []
    _collect(ast, roots, found)
    return found


@functools.lru_cache(maxsize=1024)
def _single_expression(template: str) -> str | None:
    text = template.strip()
    if not (text.startswith("{{") and text.endswith("}}")):
        return None
    try:
        body = _parsed(text).body
    except TemplateSyntaxError:
        return None
    if len(body) != 1 or not isinstance(body[0], nodes.Output):
        return None
    parts = body[0].nodes
    if len(parts) != 1 or isinstance(parts[0], nodes.TemplateData):
        return None
    inner = text[2:-2]
    inner = inner[1:] if inner.startswith(("-", "+")) else inner
    inner = inner[:-1] if inner.endswith("-") else inner
    return inner.strip()


def _collect(node: nodes.Node, roots: set[str], found: list[Reference]) -> None:
    chain = _chain(node)
    if chain is None:
        for child in node.iter_child_nodes():
            _collect(child, roots, found)
        return
    name, path, dynamic = chain
    if name.name in roots and name.ctx == "load":
        found.append(Reference(root=name.name, path=path, lineno=node.lineno))
    for child in dynamic:
        _collect(child, roots, found)


def _chain(node: nodes.Node) -> tuple[nodes.Name, tuple[str | int, ...], list[nodes.Node]] | None:
    """`a.b['c'].d` as (Name a, ("b", "c", "d"), []); a computed subscript cuts the path."""
    parts: list[str | int] = []
    dynamic: list[nodes.Node] = []
    current = node
    while not isinstance(current, nodes.Name):
        if isinstance(current, nodes.Getattr):
            parts.append(current.attr)
            current = current.node
        elif isinstance(current, nodes.Getitem):
            key = _constant_key(current.arg)
            if key is None:
                parts.clear()
                dynamic.append(current.arg)
            else:
                parts.append(key)
            current = current.node
        else:
            return None
    return current, tuple(reversed(parts)), dynamic


def _constant_key(node: nodes.Node) -> str | int | None:
    if isinstance(node, nodes.Const):
        value: Any = node.value
        if isinstance(value, str | int) and not isinstance(value, bool):
            return value
    return None


def _undefined(template: str, context: Mapping[str, Any], fallback: str) -> TemplateRenderError:
    """Name the first reference of the template that the context cannot resolve."""
    try:
        refs = references(template)
    except TemplateSyntaxError:
        refs = []
    for ref in refs:
        missing = _missing_part(ref, context)
        if missing is not None:
            return TemplateRenderError(f"'{ref}' is undefined{missing}", variable=str(ref))
    return TemplateRenderError(f"undefined variable: {fallback}")


def _missing_part(ref: Reference, context: Mapping[str, Any]) -> str | None:
    """None if `ref` resolves (as far as plain dicts and lists go), else why it does not."""
    current: Any = context
    for part in (ref.root, *ref.path):
        if isinstance(current, Mapping):
            if part not in current:
                keys = ", ".join(str(key) for key in current) or "none"
                return f": no {part!r} (available: {keys})"
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int):
            if not -len(current) <= part < len(current):
                return f": index {part} is out of range for a list of {len(current)}"
            current = current[part]
        else:
            return None
    return None
