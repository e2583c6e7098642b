"""Charts for the Costs page, drawn server-side as SVG.

`stacked_bars` draws spend over time, one bar per time bucket stacked by group (workflow,
agent, model or tenant); `meter` draws how much of a budget is used. Colours come from
static/svg.css by class (`series-0`... `series-other`, `meter-over`); every group name and
label is escaped.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from markupsafe import Markup

from agentmill.web._svg import element, truncate

__all__ = ["Point", "format_amount", "meter", "nice_ticks", "stacked_bars"]

Point = tuple[float, str, float]
"""(bucket start in epoch seconds, group name, value)."""

_WIDTH = 720
_LEFT = 72
_RIGHT = 16
_TOP = 12
_PLOT_H = 220
_AXIS_H = 28
_LEGEND_COLUMNS = 3
_LEGEND_ROW = 20
_LEGEND_CHARS = 26
_LABEL_SPACING = 84
_CURRENCIES = frozenset("$€£¥")
_DAY = 86400
_SERIES_CLASSES = 10
"""svg.css colours series-0 to series-9; more groups reuse them."""


@dataclass(frozen=True, kw_only=True)
class _Series:
    name: str
    css: str
    total: float
    folded: int = 1
    """How many groups the series stands for (more than one for "other")."""


@dataclass(frozen=True, kw_only=True)
class _Table:
    buckets: list[float]
    series: list[_Series]
    values: dict[tuple[float, int], float]
    """Value per (bucket, index in `series`)."""


def format_amount(value: float, unit: str = "$", decimals: int | None = None) -> str:
    """`$0.0123`, `$12.50`, `1,200 tokens`: currencies before the number, other units after."""
    if decimals is None:
        decimals = 4 if abs(value) < 1 and value != 0 else 2
        if unit not in _CURRENCIES and value == int(value):
            decimals = 0
    number = f"{value:,.{decimals}f}"
    if unit in _CURRENCIES:
        return f"-{unit}{number[1:]}" if number.startswith("-") else f"{unit}{number}"
    return f"{number} {unit}" if unit else number


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Evenly spaced round values (steps of 1, 2, 2.5 or 5 x 10^k) from 0 to at least `top`."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    steps = math.ceil(top / step - 1e-9)
    return [round(i * step, 12) for i in range(steps + 1)]


def _tick_decimals(step: float, unit: str) -> int:
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if round(step * 10**decimals) != step * 10**decimals:
        decimals += 1
    if unit in _CURRENCIES and step < 1:
        decimals = max(decimals, 2)
    return decimals


def _table(points: Iterable[Point], groups_max: int) -> _Table:
    sums: defaultdict[tuple[float, str], float] = defaultdict(float)
    totals: defaultdict[str, float] = defaultdict(float)
    for bucket, group, value in points:
        if not math.isfinite(value) or not math.isfinite(bucket):
            continue
        sums[bucket, group] += value
        totals[group] += value
    ranked = sorted(totals, key=lambda g: (-totals[g], g))
    kept = ranked[: max(groups_max, 1)] if len(ranked) > groups_max else ranked
    series = [
        _Series(name=g, css=f"series-{i % _SERIES_CLASSES}", total=totals[g])
        for i, g in enumerate(kept)
    ]
    position = {g: i for i, g in enumerate(kept)}
    rest = ranked[len(kept) :]
    if rest:
        total = sum(totals[g] for g in rest)
        series.append(_Series(name="other", css="series-other", total=total, folded=len(rest)))
    values: defaultdict[tuple[float, int], float] = defaultdict(float)
    for (bucket, group), value in sums.items():
        values[bucket, position.get(group, len(kept))] += value
    buckets = sorted({bucket for bucket, _ in sums})
    return _Table(buckets=buckets, series=series, values=dict(values))


def _date_format(buckets: list[float]) -> str:
    gaps = [b - a for a, b in itertools.pairwise(buckets)]
    daily = all(b % _DAY == 0 for b in buckets) and all(g >= _DAY for g in gaps)
    return "%Y-%m-%d" if daily else "%Y-%m-%d %H:%M"


def _date(bucket: float, pattern: str) -> str:
    return datetime.fromtimestamp(bucket, tz=UTC).strftime(pattern)


def stacked_bars(
    points: Iterable[Point],
    *,
    unit: str = "$",
    groups_max: int = 8,
    label: str = "Spend over time",
    dimension: str = "",
    empty_text: str = "No spend in this period",
) -> Markup:
    """Bars per time bucket stacked by group: the `groups_max` groups with the highest
    totals, the rest folded into "other". `dimension` ("workflow") prefixes group names in
    tooltips: "workflow X, 2026-12-07: $0.0123"."""
    table = _table(points, groups_max)
    if not table.buckets:
        return _empty(label, empty_text)
    heights = [
        sum(table.values.get((b, i), 0.0) for i in range(len(table.series))) for b in table.buckets
    ]
    ticks = nice_ticks(max(max(heights), 0.0))
    legend_rows = math.ceil(len(table.series) / _LEGEND_COLUMNS)
    height = _TOP + _PLOT_H + _AXIS_H + legend_rows * _LEGEND_ROW + _TOP
    total = sum(s.total for s in table.series)
    return element(
        "svg",
        {
            "xmlns": "http://www.w3.org/2000/svg",
            "class": "chart chart-bars",
            "viewBox": f"0 0 {_WIDTH} {height}",
            "width": _WIDTH,
            "height": height,
            "role": "img",
            "aria-label": f"{label}: {format_amount(total, unit)} in {len(table.buckets)} periods",
        },
        _y_axis(ticks, unit),
        _x_axis(table.buckets),
        _bars(table, ticks[-1], unit, dimension),
        _legend(table.series, unit),
    )


def _empty(label: str, text: str) -> Markup:
    return element(
        "svg",
        {
            "xmlns": "http://www.w3.org/2000/svg",
            "class": "chart chart-empty",
            "viewBox": f"0 0 {_WIDTH} 60",
            "width": _WIDTH,
            "height": 60,
            "role": "img",
            "aria-label": f"{label}: {text}",
        },
        element(
            "text",
            {"class": "chart-empty-text", "x": _WIDTH / 2, "y": 34, "text-anchor": "middle"},
            text,
        ),
    )


def _y(value: float, top: float) -> float:
    return _TOP + _PLOT_H - (value / top) * _PLOT_H if top > 0 else _TOP + _PLOT_H


def _y_axis(ticks: list[float], unit: str) -> Markup:
    decimals = _tick_decimals(ticks[1] - ticks[0], unit)
    parts: list[Markup] = []
    for tick in ticks:
        y = _y(tick, ticks[-1])
        parts.append(
            element(
                "line",
                {"class": "chart-grid", "x1": _LEFT, "x2": _WIDTH - _RIGHT, "y1": y, "y2": y},
            )
        )
        attrs = {"class": "chart-tick", "x": _LEFT - 6, "y": y + 4, "text-anchor": "end"}
        parts.append(element("text", attrs, format_amount(tick, unit, decimals)))
    return element("g", {"class": "chart-y"}, *parts)


def _slot(count: int) -> float:
    return (_WIDTH - _LEFT - _RIGHT) / count


def _x_axis(buckets: list[float]) -> Markup:
    pattern = _date_format(buckets)
    slot = _slot(len(buckets))
    every = (
        max(1, math.ceil(_LABEL_SPACING / slot))
        if pattern == "%Y-%m-%d"
        else max(1, math.ceil(120 / slot))
    )
    base = _TOP + _PLOT_H
    parts = [
        element(
            "line",
            {"class": "chart-axis", "x1": _LEFT, "x2": _WIDTH - _RIGHT, "y1": base, "y2": base},
        )
    ]
    for i in range(0, len(buckets), every):
        attrs = {
            "class": "chart-tick",
            "x": _LEFT + (i + 0.5) * slot,
            "y": base + 18,
            "text-anchor": "middle",
        }
        parts.append(element("text", attrs, _date(buckets[i], pattern)))
    return element("g", {"class": "chart-x"}, *parts)


def _bars(table: _Table, top: float, unit: str, dimension: str) -> Markup:
    pattern = _date_format(table.buckets)
    slot = _slot(len(table.buckets))
    width = max(slot * 0.7, 1.0)
    parts: list[Markup] = []
    for column, bucket in enumerate(table.buckets):
        x = _LEFT + column * slot + (slot - width) / 2
        stacked = 0.0
        for index, series in enumerate(table.series):
            value = table.values.get((bucket, index), 0.0)
            if value <= 0:
                continue
            y_top, y_bottom = _y(stacked + value, top), _y(stacked, top)
            stacked += value
            name = f"{dimension} {series.name}" if dimension else series.name
            tip = f"{name}, {_date(bucket, pattern)}: {format_amount(value, unit)}"
            attrs = {
                "class": f"chart-bar {series.css}",
                "x": x,
                "y": y_top,
                "width": width,
                "height": y_bottom - y_top,
            }
            parts.append(element("rect", attrs, element("title", None, tip)))
    return element("g", {"class": "chart-bars"}, *parts)


def _legend(series: list[_Series], unit: str) -> Markup:
    column_width = (_WIDTH - _LEFT - _RIGHT) / _LEGEND_COLUMNS
    top = _TOP + _PLOT_H + _AXIS_H
    items: list[Markup] = []
    for i, item in enumerate(series):
        x = _LEFT + (i % _LEGEND_COLUMNS) * column_width
        y = top + (i // _LEGEND_COLUMNS) * _LEGEND_ROW
        name = f"{item.name} ({item.folded} groups)" if item.folded > 1 else item.name
        items.append(
            element(
                "g",
                {"class": "chart-legend-item"},
                element("title", None, f"{name}: {format_amount(item.total, unit)}"),
                element(
                    "rect",
                    {
                        "class": f"chart-swatch {item.css}",
                        "x": x,
                        "y": y,
                        "width": 12,
                        "height": 12,
                        "rx": 2,
                    },
                ),
                element(
                    "text",
                    {"class": "chart-legend-text", "x": x + 18, "y": y + 11},
                    truncate(name, _LEGEND_CHARS),
                ),
            )
        )
    return element("g", {"class": "chart-legend"}, *items)


_METER_W = 200


def meter(used: float, limit: float, *, unit: str = "$", label: str = "Budget") -> Markup:
    """A horizontal bar: `used` of `limit`, with the percentage; `meter-warn` from 80%,
    `meter-over` past the limit (a limit of 0 or less is over as soon as anything is used)."""
    used = used if math.isfinite(used) else 0.0
    ratio = used / limit if limit > 0 else (math.inf if used > 0 else 0.0)
    over = used > limit
    state = "meter-over" if over else "meter-warn" if ratio >= 0.8 else "meter-ok"
    percent = f"{ratio * 100:.0f}%" if math.isfinite(ratio) else "over"
    text = f"{format_amount(used, unit)} of {format_amount(limit, unit)} ({percent})"
    fill = _METER_W * min(max(ratio, 0.0), 1.0)
    return element(
        "svg",
        {
            "xmlns": "http://www.w3.org/2000/svg",
            "class": f"meter {state}",
            "viewBox": "0 0 420 20",
            "width": 420,
            "height": 20,
            "role": "img",
            "aria-label": f"{label}: {text}",
        },
        element("title", None, f"{label}: {text}"),
        element(
            "rect",
            {"class": "meter-track", "x": 0, "y": 4, "width": _METER_W, "height": 12, "rx": 3},
        ),
        element(
            "rect", {"class": "meter-fill", "x": 0, "y": 4, "width": fill, "height": 12, "rx": 3}
        ),
        element("text", {"class": "meter-text", "x": _METER_W + 8, "y": 15}, text),
    )
