"""A run's workflow drawn as an SVG DAG, left to right, server-side.

`layout_dag` places the steps of a plan snapshot in layers (a step's layer is the longest
path to it from a step that needs nothing), orders each layer by the barycenter of its
neighbours to reduce edge crossings (long edges pass through placeholder slots so they
never cross a box), and is deterministic: the same steps give the same layout.
`render_dag` draws a layout with each step's state as a class (`state-running`...) that
static/svg.css colours and that the run page's script may change live.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from markupsafe import Markup

from agentmill.store.records import StepRecord, StepStatus
from agentmill.web._svg import element, truncate

__all__ = [
    "STATES",
    "DagEdge",
    "DagLayout",
    "DagNode",
    "StepLike",
    "dag_node_id",
    "foreach_counts",
    "layout_dag",
    "render_dag",
    "step_states",
]

STATES = ("pending", "running", "waiting", "succeeded", "failed", "skipped", "cancelled")
"""The states a step is drawn in; any other value is drawn as `pending`."""

NODE_W = 176
NODE_H = 44
_GAP_X = 56
_GAP_Y = 14
_DUMMY_H = 0
_PAD = 12
_LABEL_CHARS = 21
_KIND_CHARS = 24
_SWEEPS = 8
_TRANSPOSE_SLOTS = 2000
"""Above this many slots (steps and long-edge placeholders), barycenter sweeps only."""

Kind = Literal["agent", "gate", "foreach"]


class StepLike(Protocol):
    """What the layout reads of a step: `agentmill.spec.models.StepSpec` has all of it."""

    @property
    def id(self) -> str: ...
    @property
    def needs(self) -> Sequence[str]: ...
    @property
    def agent(self) -> str | None: ...
    @property
    def approval(self) -> object | None: ...
    @property
    def foreach(self) -> str | None: ...
    @property
    def when(self) -> str | None: ...


@dataclass(frozen=True, kw_only=True)
class DagNode:
    """A step's box: top-left corner (`x`, `y`) of a NODE_W x NODE_H rectangle."""

    id: str
    kind: Kind
    agent: str | None
    when: str | None
    layer: int
    x: int
    y: int


@dataclass(frozen=True, kw_only=True)
class DagEdge:
    """`source` -> `target` through `points`: the source's right side, then the entry and
    exit of every placeholder slot passed, then the target's left side. Segments alternate:
    curve, straight (across a slot), curve..."""

    source: str
    target: str
    points: tuple[tuple[int, int], ...]


@dataclass(frozen=True, kw_only=True)
class DagLayout:
    nodes: tuple[DagNode, ...]
    edges: tuple[DagEdge, ...]
    width: int
    height: int


@dataclass(kw_only=True)
class _Graph:
    """Slots 0..n-1 are the steps; slots from n on are placeholders of long edges."""

    layer: list[int]
    up: list[list[int]]
    down: list[list[int]]
    chains: list[tuple[int, int, list[int]]]
    """Every edge: source slot, target slot, placeholders passed in order."""


def dag_node_id(step_id: str) -> str:
    """A DOM id for a step's node, made of `[A-Za-z0-9_-]` only, distinct for distinct ids."""
    out: list[str] = []
    for char in step_id:
        if char == "_":
            out.append("__")
        elif char.isascii() and (char.isalnum() or char == "-"):
            out.append(char)
        else:
            out.append(f"_x{ord(char):x}_")
    return "dag-" + "".join(out)


def layout_dag(steps: Sequence[StepLike]) -> DagLayout:
    """Place `steps` (in config order; needs of unknown steps are ignored) in layers."""
    first: dict[str, StepLike] = {}
    for step in steps:
        first.setdefault(step.id, step)
    unique = list(first.values())
    if not unique:
        return DagLayout(nodes=(), edges=(), width=2 * _PAD, height=2 * _PAD)
    index = {step.id: i for i, step in enumerate(unique)}
    parents = [
        [index[p] for p in dict.fromkeys(step.needs) if p in index and p != step.id]
        for step in unique
    ]
    graph = _graph(parents, _layers(parents))
    rows = _order(graph)
    centres = _place(rows, len(unique))
    nodes = tuple(_node(step, graph.layer[i], centres[i]) for i, step in enumerate(unique))
    edges = tuple(_edge(unique, graph, chain, centres) for chain in graph.chains)
    width = 2 * _PAD + len(rows) * NODE_W + (len(rows) - 1) * _GAP_X
    height = 2 * _PAD + max(_column_height(row, len(unique)) for row in rows)
    return DagLayout(nodes=nodes, edges=edges, width=width, height=height)


def _layers(parents: list[list[int]]) -> list[int]:
    """Longest path from a root, in topological order; a cycle is broken at its first step."""
    count = len(parents)
    children: list[list[int]] = [[] for _ in range(count)]
    for child, ps in enumerate(parents):
        for parent in ps:
            children[parent].append(child)
    waiting = [len(ps) for ps in parents]
    ready = [i for i in range(count) if waiting[i] == 0]
    done = [False] * count
    layer = [0] * count
    for _ in range(count):
        current = heapq.heappop(ready) if ready else done.index(False)
        done[current] = True
        layer[current] = max((layer[p] + 1 for p in parents[current] if done[p]), default=0)
        for child in children[current]:
            waiting[child] -= 1
            if waiting[child] == 0 and not done[child]:
                heapq.heappush(ready, child)
    return layer


def _graph(parents: list[list[int]], layer: list[int]) -> _Graph:
    graph = _Graph(
        layer=list(layer),
        up=[[] for _ in layer],
        down=[[] for _ in layer],
        chains=[],
    )
    for child, ps in enumerate(parents):
        for parent in ps:
            _link(graph, parent, child)
    return graph


def _link(graph: _Graph, source: int, target: int) -> None:
    """An edge, through a placeholder in every layer it crosses (none for a back edge)."""
    passed: list[int] = []
    previous = source
    for layer in range(graph.layer[source] + 1, graph.layer[target]):
        slot = len(graph.layer)
        graph.layer.append(layer)
        graph.up.append([previous])
        graph.down.append([])
        graph.down[previous].append(slot)
        passed.append(slot)
        previous = slot
    if graph.layer[previous] < graph.layer[target]:
        graph.down[previous].append(target)
        graph.up[target].append(previous)
    graph.chains.append((source, target, passed))


def _order(graph: _Graph) -> list[list[int]]:
    """Slots per layer, reordered by barycenter sweeps and swaps of neighbours; the order
    with the fewest crossings."""
    rows: list[list[int]] = [[] for _ in range(max(graph.layer) + 1)]
    for slot, layer in enumerate(graph.layer):
        rows[layer].append(slot)
    best, fewest = [list(row) for row in rows], _crossings(rows, graph)
    for sweep in range(_SWEEPS):
        downwards = sweep % 2 == 0
        layers = range(1, len(rows)) if downwards else range(len(rows) - 2, -1, -1)
        for layer in layers:
            reference = rows[layer - 1] if downwards else rows[layer + 1]
            rows[layer] = _by_barycenter(
                rows[layer], reference, graph.up if downwards else graph.down
            )
        if len(graph.layer) <= _TRANSPOSE_SLOTS:
            _transpose(rows, graph)
        crossings = _crossings(rows, graph)
        if crossings < fewest:
            best, fewest = [list(row) for row in rows], crossings
    return best


def _transpose(rows: list[list[int]], graph: _Graph) -> None:
    """Swap neighbours in a layer while that removes crossings with the layers beside it."""
    for _ in range(_SWEEPS):
        swapped = False
        for layer, row in enumerate(rows):
            above = _positions(rows[layer - 1]) if layer else {}
            below = _positions(rows[layer + 1]) if layer + 1 < len(rows) else {}
            for i in range(len(row) - 1):
                u, v = row[i], row[i + 1]
                if _pair_crossings(v, u, graph, above, below) < _pair_crossings(
                    u, v, graph, above, below
                ):
                    row[i], row[i + 1] = v, u
                    swapped = True
        if not swapped:
            return


def _positions(row: list[int]) -> dict[int, int]:
    return {slot: i for i, slot in enumerate(row)}


def _pair_crossings(
    first: int, second: int, graph: _Graph, above: dict[int, int], below: dict[int, int]
) -> int:
    """Crossings between the edges of `first` and `second` when `first` comes first."""
    up = sum(1 for a in graph.up[first] for b in graph.up[second] if above[a] > above[b])
    down = sum(1 for a in graph.down[first] for b in graph.down[second] if below[a] > below[b])
    return up + down


def _by_barycenter(row: list[int], reference: list[int], neighbours: list[list[int]]) -> list[int]:
    position = {slot: i for i, slot in enumerate(reference)}

    def key(item: tuple[int, int]) -> tuple[float, int]:
        index, slot = item
        near = [position[n] for n in neighbours[slot] if n in position]
        return (sum(near) / len(near) if near else float(index), index)

    return [slot for _, slot in sorted(enumerate(row), key=key)]


def _crossings(rows: list[list[int]], graph: _Graph) -> int:
    """Edge crossings between adjacent layers: inversions of the lower ends, O(E log E)."""
    total = 0
    for upper, lower in itertools.pairwise(rows):
        position = {slot: i for i, slot in enumerate(lower)}
        ends = [position[c] for s in upper for c in sorted(graph.down[s], key=position.__getitem__)]
        seen: list[int] = []
        for end in ends:
            total += len(seen) - bisect.bisect_right(seen, end)
            bisect.insort(seen, end)
    return total


def _slot_height(slot: int, steps: int) -> int:
    return NODE_H if slot < steps else _DUMMY_H


def _column_height(row: list[int], steps: int) -> int:
    return sum(_slot_height(s, steps) for s in row) + _GAP_Y * (len(row) - 1)


def _place(rows: list[list[int]], steps: int) -> dict[int, tuple[int, int]]:
    """The centre of every slot; each layer is centred vertically on the tallest."""
    tallest = max(_column_height(row, steps) for row in rows)
    centres: dict[int, tuple[int, int]] = {}
    for layer, row in enumerate(rows):
        x = _PAD + layer * (NODE_W + _GAP_X) + NODE_W // 2
        y = _PAD + (tallest - _column_height(row, steps)) // 2
        for slot in row:
            height = _slot_height(slot, steps)
            centres[slot] = (x, y + height // 2)
            y += height + _GAP_Y
    return centres


def _kind(step: StepLike) -> Kind:
    if step.approval is not None:
        return "gate"
    return "foreach" if step.foreach is not None else "agent"


def _node(step: StepLike, layer: int, centre: tuple[int, int]) -> DagNode:
    x, y = centre
    return DagNode(
        id=step.id,
        kind=_kind(step),
        agent=step.agent,
        when=step.when,
        layer=layer,
        x=x - NODE_W // 2,
        y=y - NODE_H // 2,
    )


def _edge(
    steps: list[StepLike],
    graph: _Graph,
    chain: tuple[int, int, list[int]],
    centres: dict[int, tuple[int, int]],
) -> DagEdge:
    source, target, passed = chain
    (sx, sy), (tx, ty) = centres[source], centres[target]
    points = [(sx + NODE_W // 2, sy)]
    for slot in passed:
        x, y = centres[slot]
        points += [(x - NODE_W // 2, y), (x + NODE_W // 2, y)]
    points.append((tx - NODE_W // 2, ty))
    return DagEdge(source=steps[source].id, target=steps[target].id, points=tuple(points))


def render_dag(
    layout: DagLayout,
    states: Mapping[str, str] | None = None,
    *,
    label: str = "Workflow",
    items: Mapping[str, int] | None = None,
) -> Markup:
    """The SVG of `layout`; `states` by step id (missing: pending), `items` the number of
    calls of foreach steps when known. Every text and attribute value is escaped."""
    states = states or {}
    items = items or {}
    count = len(layout.nodes)
    return element(
        "svg",
        {
            "xmlns": "http://www.w3.org/2000/svg",
            "class": "dag",
            "viewBox": f"0 0 {layout.width} {layout.height}",
            "width": layout.width,
            "height": layout.height,
            "role": "img",
            "aria-label": f"{label}: {count} step{'' if count == 1 else 's'}",
        },
        _DEFS,
        element("g", {"class": "dag-edges"}, *(_edge_path(e) for e in layout.edges)),
        element(
            "g",
            {"class": "dag-nodes"},
            *(_node_group(n, states.get(n.id, "pending"), items.get(n.id)) for n in layout.nodes),
        ),
    )


_DEFS = element(
    "defs",
    None,
    element(
        "marker",
        {
            "id": "dag-arrow",
            "viewBox": "0 0 10 10",
            "refX": 10,
            "refY": 5,
            "markerWidth": 7,
            "markerHeight": 7,
            "orient": "auto",
        },
        element("path", {"class": "dag-arrowhead", "d": "M0,0 L10,5 L0,10 z"}),
    ),
)


def _edge_path(edge: DagEdge) -> Markup:
    (x, y), *rest = edge.points
    commands = [f"M{x},{y}"]
    for i, (nx, ny) in enumerate(rest):
        if i % 2 == 0:
            middle = (x + nx) / 2
            commands.append(f"C{middle:g},{y} {middle:g},{ny} {nx},{ny}")
        else:
            commands.append(f"L{nx},{ny}")
        x, y = nx, ny
    return element(
        "path",
        {
            "class": "dag-edge",
            "d": " ".join(commands),
            "marker-end": "url(#dag-arrow)",
            "data-from": edge.source,
            "data-to": edge.target,
        },
    )


def _kind_text(node: DagNode, count: int | None) -> str:
    if node.kind == "gate":
        return "approval gate"
    agent = node.agent or "agent"
    if node.kind == "agent":
        return agent
    return f"{agent} \u00d7{count}" if count is not None else f"{agent} \u00d7 each"


def _node_group(node: DagNode, state: str, count: int | None) -> Markup:
    state = state if state in STATES else "pending"
    kind = _kind_text(node, count)
    tooltip = f"{node.id}\n{kind}" + (f"\nwhen: {node.when}" if node.when else "")
    classes = f"dag-node state-{state} kind-{node.kind}" + (" dag-conditional" if node.when else "")
    children = [
        element("title", None, tooltip),
        element(
            "rect",
            {
                "class": "dag-box",
                "x": node.x,
                "y": node.y,
                "width": NODE_W,
                "height": NODE_H,
                "rx": 6,
            },
        ),
        element(
            "text",
            {"class": "dag-label", "x": node.x + 10, "y": node.y + 19},
            truncate(node.id, _LABEL_CHARS),
        ),
        element(
            "text",
            {"class": "dag-kind", "x": node.x + 10, "y": node.y + 35},
            truncate(kind, _KIND_CHARS),
        ),
    ]
    if node.when:
        badge = {
            "class": "dag-when",
            "x": node.x + NODE_W - 8,
            "y": node.y + 15,
            "text-anchor": "end",
        }
        children.append(element("text", badge, "if"))
    attrs = {"class": classes, "data-step": node.id, "id": dag_node_id(node.id)}
    return element("g", attrs, *children)


def step_states(
    steps: Sequence[StepLike],
    records: Iterable[StepRecord],
    *,
    run_status: str,
    waiting: Collection[str] = (),
) -> dict[str, str]:
    """Each step's state for `render_dag` from a run's step records (one per call of a
    foreach step). A running approval gate, or a step listed in `waiting` (a tool call
    awaiting approval), is `waiting`; steps a finished run never reached are `cancelled`
    when it was cancelled, `skipped` otherwise."""
    found: defaultdict[str, set[StepStatus]] = defaultdict(set)
    for record in records:
        found[record.step_id].add(record.status)
    return {
        step.id: _state(step, found.get(step.id, set()), run_status, step.id in waiting)
        for step in steps
    }


def _state(step: StepLike, statuses: set[StepStatus], run_status: str, waiting: bool) -> str:
    if not statuses:
        finished = run_status in ("succeeded", "failed", "cancelled")
        return (
            "pending" if not finished else "cancelled" if run_status == "cancelled" else "skipped"
        )
    if StepStatus.RUNNING in statuses:
        if run_status == "cancelled":
            return "cancelled"
        return "waiting" if waiting or step.approval is not None else "running"
    if StepStatus.FAILED in statuses:
        return "failed"
    return "skipped" if statuses == {StepStatus.SKIPPED} else "succeeded"


def foreach_counts(records: Iterable[StepRecord]) -> dict[str, int]:
    """Calls per foreach step as far as the records show (the highest item index + 1)."""
    counts: dict[str, int] = {}
    for record in records:
        if record.item_index is not None:
            counts[record.step_id] = max(counts.get(record.step_id, 0), record.item_index + 1)
    return counts
