"""The Costs page's charts: stacked spend bars, axis ticks, budget meters, escaping."""

from __future__ import annotations

import itertools
import math
import xml.etree.ElementTree as ET
from collections import defaultdict

import pytest

from agentmill.web.charts import Point, format_amount, meter, nice_ticks, stacked_bars

SVG = "{http://www.w3.org/2000/svg}"
DAY = 86400
DEC_7 = 1796601600  # 2026-12-07T00:00:00Z
EVIL = ("<script>alert(1)</script>", '" onload="x', "a&b'c")


def parse(markup: str) -> ET.Element:
    return ET.fromstring(str(markup))


def by_class(svg: ET.Element, tag: str, css: str) -> list[ET.Element]:
    return [e for e in svg.iter(f"{SVG}{tag}") if css in (e.get("class") or "").split()]


def title(element: ET.Element) -> str:
    found = element.find(f"{SVG}title")
    assert found is not None
    assert found.text is not None
    return found.text


def num(element: ET.Element, name: str) -> float:
    return float(element.get(name) or "nan")


@pytest.mark.parametrize("top", [0.0004, 0.0123, 0.5, 0.99, 1, 3.7, 12, 99.5, 100, 1234.5, 8e6])
def test_ticks_are_round_steps_from_zero_past_the_top(top: float) -> None:
    ticks = nice_ticks(top)
    step = ticks[1] - ticks[0]
    assert ticks[0] == 0
    assert ticks[-1] >= top
    assert ticks[-2] < top  # no empty band above the data
    assert 3 <= len(ticks) <= 7
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(math.isclose(mantissa, m) for m in (1, 2, 2.5, 5))
    assert all(math.isclose(b - a, step) for a, b in itertools.pairwise(ticks))


def test_amounts_read_like_money_or_counts() -> None:
    assert format_amount(0.0123) == "$0.0123"
    assert format_amount(12.5) == "$12.50"
    assert format_amount(1234.567) == "$1,234.57"
    assert format_amount(0) == "$0.00"
    assert format_amount(1200, "tokens") == "1,200 tokens"
    assert format_amount(0.5, "$", decimals=2) == "$0.50"


def spend(days: int, groups: dict[str, float]) -> list[Point]:
    return [(DEC_7 + d * DAY, g, v * (d + 1)) for d in range(days) for g, v in groups.items()]


def test_bars_stack_each_days_groups_in_proportion_to_spend() -> None:
    points = spend(3, {"review": 0.01, "triage": 0.03})
    svg = parse(stacked_bars(points, dimension="workflow"))
    bars = by_class(svg, "rect", "chart-bar")
    assert len(bars) == 6
    columns: defaultdict[float, list[ET.Element]] = defaultdict(list)
    for bar in bars:
        columns[num(bar, "x")].append(bar)
    assert len(columns) == 3
    heights = []
    for x in sorted(columns):
        segments = sorted(columns[x], key=lambda b: num(b, "y"))
        for upper, lower in itertools.pairwise(segments):
            assert math.isclose(num(upper, "y") + num(upper, "height"), num(lower, "y"))
        heights.append(sum(num(b, "height") for b in segments))
    assert heights[1] == pytest.approx(2 * heights[0], rel=1e-3)
    assert heights[2] == pytest.approx(3 * heights[0], rel=1e-3)
    tips = {title(b) for b in bars}
    assert "workflow triage, 2026-12-07: $0.0300" in tips
    assert "workflow review, 2026-12-09: $0.0300" in tips


def test_the_y_axis_top_tick_is_at_or_above_the_tallest_bar() -> None:
    svg = parse(stacked_bars(spend(4, {"a": 0.7, "b": 0.2})))  # tallest: 3.6
    labels = [t.text for t in by_class(svg, "text", "chart-tick")]
    assert labels[:5] == ["$0", "$1", "$2", "$3", "$4"]
    grid = by_class(svg, "line", "chart-grid")
    top_line = min(num(line, "y1") for line in grid)
    assert min(num(b, "y") for b in by_class(svg, "rect", "chart-bar")) >= top_line


def test_the_x_axis_is_labelled_with_the_bucket_dates() -> None:
    svg = parse(stacked_bars(spend(3, {"a": 1})))
    axis = [g for g in svg.iter(f"{SVG}g") if g.get("class") == "chart-x"]
    assert [t.text for t in axis[0].iter(f"{SVG}text")] == [
        "2026-12-07",
        "2026-12-08",
        "2026-12-09",
    ]
    hourly = parse(stacked_bars([(DEC_7 + 3600 * h, "a", 1.0) for h in range(2)]))
    ticks = [t.text for t in by_class(hourly, "text", "chart-tick")]
    assert "2026-12-07 01:00" in ticks


def test_many_days_thin_the_date_labels_but_keep_every_bar() -> None:
    svg = parse(stacked_bars(spend(90, {"a": 0.01})))
    assert len(by_class(svg, "rect", "chart-bar")) == 90
    axis = next(g for g in svg.iter(f"{SVG}g") if g.get("class") == "chart-x")
    assert 4 <= len(list(axis.iter(f"{SVG}text"))) <= 10


def test_the_legend_keeps_the_top_groups_and_folds_the_rest_into_other() -> None:
    totals = {f"wf-{i:02d}": float(i + 1) for i in range(12)}  # wf-11 spends most
    points: list[Point] = [(DEC_7, g, v) for g, v in totals.items()]
    svg = parse(stacked_bars(points, groups_max=3))
    legend = [t.text for t in by_class(svg, "text", "chart-legend-text")]
    assert legend == ["wf-11", "wf-10", "wf-09", "other (9 groups)"]
    swatches = [s.get("class") for s in by_class(svg, "rect", "chart-swatch")]
    assert swatches == [
        "chart-swatch series-0",
        "chart-swatch series-1",
        "chart-swatch series-2",
        "chart-swatch series-other",
    ]
    (other,) = [
        b for b in by_class(svg, "rect", "chart-bar") if "series-other" in b.get("class", "")
    ]
    assert title(other) == "other, 2026-12-07: $45.00"  # 1 + 2 + ... + 9


@pytest.mark.parametrize("evil", EVIL)
def test_hostile_group_names_are_escaped(evil: str) -> None:
    points: list[Point] = [(DEC_7, evil, 0.5), (DEC_7 + DAY, "fine", 0.25)]
    markup = str(stacked_bars(points, dimension=evil, label=evil))
    assert "<script" not in markup
    assert "style=" not in markup
    svg = parse(markup)
    assert evil in [t.text for t in by_class(svg, "text", "chart-legend-text")]
    assert f"{evil} {evil}, 2026-12-07: $0.5000" in {
        title(b) for b in by_class(svg, "rect", "chart-bar")
    }
    assert (svg.get("aria-label") or "").startswith(evil)
    for element in svg.iter():
        assert not any(name.startswith("on") for name in element.attrib)


def test_no_points_draw_the_empty_state() -> None:
    svg = parse(stacked_bars([], empty_text="Nothing spent <yet>"))
    assert "chart-empty" in (svg.get("class") or "")
    assert [t.text for t in svg.iter(f"{SVG}text")] == ["Nothing spent <yet>"]
    assert by_class(svg, "rect", "chart-bar") == []


def meter_parts(markup: str) -> tuple[ET.Element, float, str]:
    svg = parse(markup)
    (fill,) = by_class(svg, "rect", "meter-fill")
    (track,) = by_class(svg, "rect", "meter-track")
    (text,) = by_class(svg, "text", "meter-text")
    return svg, num(fill, "width") / num(track, "width"), text.text or ""


@pytest.mark.parametrize(
    ("used", "limit", "state", "ratio", "text"),
    [
        (1.25, 5, "meter-ok", 0.25, "$1.25 of $5.00 (25%)"),
        (4.5, 5, "meter-warn", 0.9, "$4.50 of $5.00 (90%)"),
        (7, 5, "meter-over", 1.0, "$7.00 of $5.00 (140%)"),
        (0, 0, "meter-ok", 0.0, "$0.00 of $0.00 (0%)"),
        (0.5, 0, "meter-over", 1.0, "$0.5000 of $0.00 (over)"),
    ],
)
def test_a_meter_shows_the_share_of_its_budget_used(
    used: float, limit: float, state: str, ratio: float, text: str
) -> None:
    svg, filled, shown = meter_parts(meter(used, limit, label="Team <budget>"))
    assert state in (svg.get("class") or "").split()
    assert filled == pytest.approx(ratio)
    assert shown == text
    assert svg.get("aria-label") == f"Team <budget>: {text}"


def test_values_that_are_not_numbers_are_left_out() -> None:
    points: list[Point] = [(DEC_7, "a", math.nan), (DEC_7, "b", math.inf), (DEC_7, "c", 0.5)]
    svg = parse(stacked_bars(points))
    assert [title(b) for b in by_class(svg, "rect", "chart-bar")] == ["c, 2026-12-07: $0.5000"]
    assert "nan" not in str(meter(math.nan, 5)).lower()
    _, filled, _ = meter_parts(meter(1, math.inf))
    assert filled == 0
