"""The run page's DAG: layered layout properties, rendering and escaping."""

from __future__ import annotations

import itertools
import random
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from agentmill.spec.models import WorkflowSpec
from agentmill.store.records import StepRecord, StepStatus
from agentmill.web import dag
from agentmill.web.dag import (
    NODE_H,
    NODE_W,
    DagLayout,
    dag_node_id,
    foreach_counts,
    layout_dag,
    render_dag,
    step_states,
)

SVG = "{http://www.w3.org/2000/svg}"
EVIL = ("<script>alert(1)</script>", '" onload="x', "a&b'c", "_x3c_", "ünï code")


@dataclass(frozen=True)
class Step:
    id: str
    needs: tuple[str, ...] = ()
    agent: str | None = "coder"
    approval: object | None = None
    foreach: str | None = None
    when: str | None = None


def chain(count: int) -> list[Step]:
    return [Step(f"s{i}", (f"s{i - 1}",) if i else ()) for i in range(count)]


def fan_out(width: int) -> list[Step]:
    leaves = [Step(f"leaf{i}", ("root",)) for i in range(width)]
    return [Step("root"), *leaves, Step("join", tuple(s.id for s in leaves))]


def diamond() -> list[Step]:
    return [
        Step("a"),
        Step("b", ("a",)),
        Step("c", ("a",)),
        Step("d", ("b", "c")),
        Step("e", ("a", "d")),  # a long edge a -> e past b, c and d
    ]


def random_dag(count: int, seed: int) -> list[Step]:
    rng = random.Random(seed)
    steps: list[Step] = []
    for i in range(count):
        earlier = [s.id for s in steps]
        needs = rng.sample(earlier, k=min(len(earlier), rng.randint(0, 3)))
        steps.append(Step(f"step-{i}", tuple(needs)))
    return steps


SHAPES = {
    "single": [Step("only")],
    "chain": chain(8),
    "fan_out": fan_out(40),
    "diamond": diamond(),
    "sixty": random_dag(60, seed=7),
    "sixty_wide": random_dag(60, seed=11),
}


def boxes_overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    (ax, ay), (bx, by) = a, b
    return ax < bx + NODE_W and bx < ax + NODE_W and ay < by + NODE_H and by < ay + NODE_H


def edge_crossings(layout: DagLayout) -> int:
    """Crossings between edges joining adjacent layers."""
    nodes = {n.id: n for n in layout.nodes}
    short = [
        (nodes[e.source], nodes[e.target])
        for e in layout.edges
        if nodes[e.target].layer == nodes[e.source].layer + 1
    ]
    return sum(
        1
        for (a, b), (c, d) in itertools.combinations(short, 2)
        if a.layer == c.layer and (a.y - c.y) * (b.y - d.y) < 0
    )


@pytest.mark.parametrize("name", SHAPES)
def test_every_edge_goes_left_to_right_into_a_later_layer(name: str) -> None:
    steps = SHAPES[name]
    layout = layout_dag(steps)
    nodes = {n.id: n for n in layout.nodes}
    assert len(layout.edges) == sum(len(s.needs) for s in steps)
    for edge in layout.edges:
        source, target = nodes[edge.source], nodes[edge.target]
        assert source.layer < target.layer
        assert edge.points[0] == (source.x + NODE_W, source.y + NODE_H // 2)
        assert edge.points[-1] == (target.x, target.y + NODE_H // 2)
        xs = [x for x, _ in edge.points]
        assert xs == sorted(xs)


@pytest.mark.parametrize("name", SHAPES)
def test_a_step_sits_one_layer_after_its_deepest_need(name: str) -> None:
    layout = layout_dag(SHAPES[name])
    nodes = {n.id: n for n in layout.nodes}
    for step in SHAPES[name]:
        expected = max((nodes[p].layer + 1 for p in step.needs), default=0)
        assert nodes[step.id].layer == expected


@pytest.mark.parametrize("name", SHAPES)
def test_no_two_boxes_overlap_and_all_fit_in_the_view(name: str) -> None:
    layout = layout_dag(SHAPES[name])
    corners = [(n.x, n.y) for n in layout.nodes]
    for a, b in itertools.combinations(corners, 2):
        assert not boxes_overlap(a, b)
    for x, y in corners:
        assert x >= 0
        assert x + NODE_W <= layout.width
        assert y >= 0
        assert y + NODE_H <= layout.height


@pytest.mark.parametrize("name", SHAPES)
def test_long_edges_pass_between_boxes_not_through_them(name: str) -> None:
    layout = layout_dag(SHAPES[name])
    for edge in layout.edges:
        for x, y in edge.points[1:-1]:
            for node in layout.nodes:
                inside = node.x <= x <= node.x + NODE_W and node.y <= y <= node.y + NODE_H
                assert not inside, (edge, node)


@pytest.mark.parametrize("name", SHAPES)
def test_layout_and_svg_are_deterministic(name: str) -> None:
    steps = SHAPES[name]
    assert layout_dag(steps) == layout_dag(list(steps))
    assert render_dag(layout_dag(steps)) == render_dag(layout_dag(steps))


def test_layers_are_ordered_to_avoid_crossings() -> None:
    # In config order, x (needs b) sits above y (needs a): the edges cross.
    steps = [Step("a"), Step("b"), Step("x", ("b",)), Step("y", ("a",))]
    layout = layout_dag(steps)
    assert edge_crossings(layout) == 0
    ys = {n.id: n.y for n in layout.nodes}
    assert (ys["a"] < ys["b"]) == (ys["y"] < ys["x"])


def test_ordering_removes_most_crossings_of_random_workflows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    workflows = [random_dag(60, seed) for seed in range(5)]
    ordered = sum(edge_crossings(layout_dag(steps)) for steps in workflows)
    monkeypatch.setattr(dag, "_SWEEPS", 0)  # config order within each layer
    unordered = sum(edge_crossings(layout_dag(steps)) for steps in workflows)
    assert ordered <= 0.6 * unordered


def test_diamond_and_fan_out_draw_without_crossings() -> None:
    assert edge_crossings(layout_dag(diamond())) == 0
    assert edge_crossings(layout_dag(fan_out(40))) == 0


def test_a_cycle_or_unknown_need_still_lays_out_every_step() -> None:
    steps = [Step("a", ("c",)), Step("b", ("a",)), Step("c", ("b", "ghost")), Step("a")]
    layout = layout_dag(steps)
    assert sorted(n.id for n in layout.nodes) == ["a", "b", "c"]
    ET.fromstring(render_dag(layout))


def test_a_plan_snapshots_steps_are_accepted() -> None:
    workflow = WorkflowSpec.model_validate(
        {
            "steps": [
                {"id": "plan", "agent": "planner", "prompt": "p"},
                {"id": "ok", "approval": {"prompt": "ship?"}, "needs": ["plan"]},
                {"id": "fix", "agent": "coder", "foreach": "{{ x }}", "needs": ["ok"]},
            ]
        }
    )
    svg = parse(render_dag(layout_dag(workflow.steps), items={"fix": 3}))
    kinds = {g.get("data-step"): text_of(g, "dag-kind") for g in node_groups(svg)}
    assert kinds == {"plan": "planner", "ok": "approval gate", "fix": "coder \u00d73"}


def parse(markup: str) -> ET.Element:
    return ET.fromstring(str(markup))


def node_groups(svg: ET.Element) -> list[ET.Element]:
    return [g for g in svg.iter(f"{SVG}g") if "dag-node" in (g.get("class") or "").split()]


def text_of(group: ET.Element, css: str) -> str:
    found = [t.text or "" for t in group.iter(f"{SVG}text") if t.get("class") == css]
    assert len(found) == 1
    return found[0]


def test_states_become_classes_and_unknown_states_are_pending() -> None:
    steps: Sequence[Step] = chain(3)
    states = {"s0": "succeeded", "s1": "waiting", "s2": "running extra-class"}
    svg = parse(render_dag(layout_dag(steps), states))
    classes = {g.get("data-step"): (g.get("class") or "").split() for g in node_groups(svg)}
    assert "state-succeeded" in classes["s0"]
    assert "state-waiting" in classes["s1"]
    assert "state-pending" in classes["s2"]
    assert "extra-class" not in classes["s2"]
    assert svg.get("aria-label") == "Workflow: 3 steps"


def test_long_labels_are_cut_with_an_ellipsis_and_kept_whole_in_the_title() -> None:
    long_id = "summarise-every-review-comment-in-the-pull-request"
    svg = parse(render_dag(layout_dag([Step(long_id, when="{{ inputs.deep }}")])))
    (group,) = node_groups(svg)
    label = text_of(group, "dag-label")
    assert label.endswith("\u2026")
    assert long_id.startswith(label[:-1])
    title = group.find(f"{SVG}title")
    assert title is not None
    assert title.text is not None
    assert long_id in title.text
    assert "when: {{ inputs.deep }}" in title.text
    assert "dag-conditional" in (group.get("class") or "")
    assert text_of(group, "dag-when") == "if"


@pytest.mark.parametrize("evil", EVIL)
def test_hostile_step_ids_and_agents_are_escaped(evil: str) -> None:
    steps = [Step(evil, agent=evil), Step("next", (evil,), when=evil)]
    markup = str(render_dag(layout_dag(steps), {evil: "failed"}, label=evil))
    assert "<script" not in markup
    assert "style=" not in markup
    svg = parse(markup)  # well-formed XML: no attribute broken out of
    assert svg.get("aria-label") == f"{evil}: 2 steps"
    groups = {g.get("data-step"): g for g in node_groups(svg)}
    assert set(groups) == {evil, "next"}
    assert "state-failed" in (groups[evil].get("class") or "")
    for element in svg.iter():
        assert not any(name.startswith("on") for name in element.attrib)
    edge = next(p for p in svg.iter(f"{SVG}path") if p.get("class") == "dag-edge")
    assert (edge.get("data-from"), edge.get("data-to")) == (evil, "next")


def test_node_ids_are_safe_tokens_distinct_for_distinct_steps() -> None:
    ids = [*EVIL, "a_b", "a__b", "a-b", "a b", "_", "__", "x3c", "<"]
    tokens = [dag_node_id(i) for i in ids]
    assert len(set(tokens)) == len(ids)
    assert all(re.fullmatch(r"dag-[A-Za-z0-9_-]*", t) for t in tokens)
    svg = parse(render_dag(layout_dag([Step(i) for i in ids])))
    assert [g.get("id") for g in node_groups(svg)] == tokens


def test_edges_point_at_an_arrowhead_defined_in_the_svg() -> None:
    svg = parse(render_dag(layout_dag(diamond())))
    markers = [m.get("id") for m in svg.iter(f"{SVG}marker")]
    edges = [p for p in svg.iter(f"{SVG}path") if p.get("class") == "dag-edge"]
    assert markers == ["dag-arrow"]
    assert len(edges) == 6
    assert {e.get("marker-end") for e in edges} == {"url(#dag-arrow)"}


def test_no_steps_draws_an_empty_graph() -> None:
    layout = layout_dag([])
    svg = parse(render_dag(layout))
    assert layout.nodes == ()
    assert layout.edges == ()
    assert node_groups(svg) == []
    assert svg.get("aria-label") == "Workflow: 0 steps"


def record(step: str, status: StepStatus, index: int | None = None) -> StepRecord:
    key = step if index is None else f"{step}#{index}"
    return StepRecord(
        run_id="r1", key=key, step_id=step, item_index=index, status=status, attempt=1
    )


PLAN = [
    Step("plan"),
    Step("gate", ("plan",), agent=None, approval={"prompt": "ok?"}),
    Step("fix", ("gate",), foreach="{{ x }}"),
    Step("lint", ("plan",), when="{{ false }}"),
    Step("tools", ("plan",)),
    Step("ship", ("fix",)),
]


def test_step_records_become_the_states_drawn() -> None:
    records = [
        record("plan", StepStatus.SUCCEEDED),
        record("gate", StepStatus.RUNNING),
        record("lint", StepStatus.SKIPPED),
        record("tools", StepStatus.RUNNING),
    ]
    states = step_states(PLAN, records, run_status="running", waiting={"tools"})
    assert states == {
        "plan": "succeeded",
        "gate": "waiting",
        "fix": "pending",
        "lint": "skipped",
        "tools": "waiting",
        "ship": "pending",
    }
    assert step_states(PLAN, records, run_status="running")["tools"] == "running"


def test_a_foreach_step_is_running_until_every_call_is_done_and_failed_if_one_failed() -> None:
    done = [record("plan", StepStatus.SUCCEEDED), record("gate", StepStatus.SUCCEEDED)]
    calls = [record("fix", StepStatus.SUCCEEDED, 0), record("fix", StepStatus.RUNNING, 1)]
    assert step_states(PLAN, done + calls, run_status="running")["fix"] == "running"
    calls[1] = record("fix", StepStatus.FAILED, 1)
    assert step_states(PLAN, done + calls, run_status="failed")["fix"] == "failed"
    calls[1] = record("fix", StepStatus.SUCCEEDED, 1)
    calls.append(record("fix", StepStatus.SUCCEEDED, 2))
    assert step_states(PLAN, done + calls, run_status="running")["fix"] == "succeeded"
    assert foreach_counts(done + calls) == {"fix": 3}


def test_steps_a_finished_run_never_reached_are_skipped_or_cancelled() -> None:
    records = [record("plan", StepStatus.SUCCEEDED), record("gate", StepStatus.RUNNING)]
    cancelled = step_states(PLAN, records, run_status="cancelled")
    assert (cancelled["gate"], cancelled["ship"]) == ("cancelled", "cancelled")
    failed = step_states(PLAN, [record("plan", StepStatus.FAILED)], run_status="failed")
    assert (failed["plan"], failed["ship"]) == ("failed", "skipped")
