"""Prometheus metrics of one server process, in its own registry (not the global one).

Step durations, tokens and provider errors come from the engine's events as they are
published; run counts by status and the queue depth are read from the database when
`/metrics` is scraped, so they cover every worker sharing it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agentmill.store import EventRecord, Store
from agentmill.store.cache import TenantCacheStats
from agentmill.store.cache import read_stats as read_cache_stats
from agentmill.store.costs import spend_by_workflow

__all__ = ["MAX_TOOL_LABELS", "OTHER_TOOL", "Metrics", "ToolLabels"]

_STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_TOOL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

MAX_TOOL_LABELS = 100
"""Distinct tool names a process gives their own label; later ones count as `other`."""
OTHER_TOOL = "other"
_MAX_TOOL_NAME = 100


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs = Gauge("agentmill_runs", "Runs by status", ["status"], registry=r)
        self.queue_depth = Gauge(
            "agentmill_queue_depth", "Runs waiting to start (pending)", registry=r
        )
        self.step_seconds = Histogram(
            "agentmill_step_duration_seconds",
            "Duration of successful agent calls",
            ["model"],
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "agentmill_tokens", "Tokens used by agent calls", ["model", "kind"], registry=r
        )
        self.cost = Counter(
            "agentmill_cost_usd", "Cost of agent calls in US dollars", ["model"], registry=r
        )
        self.spend = Gauge(
            "agentmill_spend_usd",
            "Known cost of the calls of every worker, by tenant and workflow (from the database)",
            ["tenant", "workflow"],
            registry=r,
        )
        self.unpriced_calls = Gauge(
            "agentmill_unpriced_calls",
            "Calls of models whose price is unknown, by tenant and workflow (from the database)",
            ["tenant", "workflow"],
            registry=r,
        )
        self.step_failures = Counter(
            "agentmill_step_failures",
            "Failed agent call attempts (retried or final), by kind of error",
            ["kind"],
            registry=r,
        )
        self.tool_calls = Counter(
            "agentmill_tool_calls",
            "Tool calls of agents by tool and outcome (ok, error: the model was shown an error)",
            ["tool", "outcome"],
            registry=r,
        )
        self.tool_seconds = Histogram(
            "agentmill_tool_call_seconds",
            "Duration of tool calls that ran, by tool",
            ["tool"],
            buckets=_TOOL_BUCKETS,
            registry=r,
        )
        self.tool_names = ToolLabels(MAX_TOOL_LABELS)
        self.webhooks = Counter(
            "agentmill_webhook_deliveries",
            "Webhook deliveries by outcome",
            ["source", "outcome"],
            registry=r,
        )
        self.requests = Histogram(
            "agentmill_http_request_duration_seconds",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=r,
        )
        # response cache: counters and size per tenant, read from the database at scrape
        self.cache = _CacheCollector()
        r.register(self.cache)

    def observe_event(self, event: EventRecord) -> None:
        """Bus listener: count what an event says about steps."""
        data = event.data
        if event.kind == "step_finished" and not data.get("gate"):
            model = str(data.get("model") or "unknown")
            self.step_seconds.labels(model).observe(float(data.get("elapsed") or 0.0))
            usage = data.get("usage") or {}
            for kind in ("input_tokens", "output_tokens"):
                self.tokens.labels(model, kind.removesuffix("_tokens")).inc(usage.get(kind, 0))
            if cost := data.get("cost_usd"):
                self.cost.labels(model).inc(float(cost))
        elif event.kind in {"step_retrying", "step_failed"} and event.attempt:
            self.step_failures.labels(str(data.get("error_kind") or "error")).inc()
        elif event.kind == "step_tool_result" and not data.get("replayed"):
            self._observe_tool(data)

    def _observe_tool(self, data: dict[str, Any]) -> None:
        """A finished tool call; one refused before it ran (a guard, an approver) counts as
        an error and takes no time."""
        tool = self.tool_names.label(str(data.get("name") or "unknown"))
        self.tool_calls.labels(tool, "error" if data.get("error") else "ok").inc()
        duration = data.get("duration")
        if isinstance(duration, int | float) and duration > 0:
            self.tool_seconds.labels(tool).observe(float(duration))

    async def render(self, store: Store) -> bytes:
        """The exposition text, with database-wide gauges refreshed first."""
        counts = await store.count_by_status()
        for status in ("pending", "running", "succeeded", "failed", "cancelled", "interrupted"):
            self.runs.labels(status).set(counts.get(status, 0))
        self.queue_depth.set(counts.get("pending", 0))
        for tenant, workflow, usd, unpriced in await spend_by_workflow(store.engine):
            self.spend.labels(tenant, workflow).set(usd)
            self.unpriced_calls.labels(tenant, workflow).set(unpriced)
        self.cache.stats = await read_cache_stats(store.engine)
        return generate_latest(self.registry)


class ToolLabels:
    """Tool names as metric labels, with bounded cardinality.

    Tool names come from MCP servers and models, so they are untrusted and unbounded: the
    first `limit` distinct names (cut to 100 characters) keep their own label for the life
    of the process, every later name is counted as `other`."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._known: set[str] = set()

    def label(self, name: str) -> str:
        name = name[:_MAX_TOOL_NAME]
        if name in self._known:
            return name
        if len(self._known) >= self._limit:
            return OTHER_TOOL
        self._known.add(name)
        return name


class _CacheCollector(Collector):
    """Response cache counters of every worker, per tenant (`agentmill_cache_*`)."""

    _COUNTERS = (
        ("hits", "Lookups answered from the cache"),
        ("misses", "Lookups that went to the model (expired and tampered entries included)"),
        ("sets", "Responses stored"),
        ("evictions", "Entries removed to stay under the size bound"),
        ("expirations", "Entries removed after their TTL"),
        ("integrity_failures", "Entries whose signature did not match (discarded)"),
    )

    def __init__(self) -> None:
        self.stats: list[TenantCacheStats] = []

    def collect(self) -> Iterator[Metric]:
        for name, help_text in self._COUNTERS:
            family = CounterMetricFamily(f"agentmill_cache_{name}", help_text, labels=["tenant"])
            for entry in self.stats:
                family.add_metric([entry.tenant], getattr(entry.counts, name))
            yield family
        entries = GaugeMetricFamily("agentmill_cache_entries", "Entries stored", labels=["tenant"])
        size = GaugeMetricFamily("agentmill_cache_bytes", "Bytes stored", labels=["tenant"])
        for entry in self.stats:
            entries.add_metric([entry.tenant], entry.entries)
            size.add_metric([entry.tenant], entry.bytes)
        yield entries
        yield size
