"""Prometheus collectors of the server, on a private registry (one per app, so tests can run several).

Names follow vLLM's (`vllm:num_requests_running` -> `swiftops_num_requests_running`) so dashboards
carry over with a prefix change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Seconds; fine at the low end, where TTFT and inter-token latency live on a GPU.
LATENCY_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
)


class ServerMetrics:
    """What /metrics exports. Gauges are read at scrape time from the callables given: the server's
    admission counts (`running`, `waiting`) and the engine's own batch (`engine_running`, `engine_waiting`)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self,
        running: Callable[[], float],
        waiting: Callable[[], float],
        engine_running: Callable[[], float],
        engine_waiting: Callable[[], float],
        prefix_cache: Callable[[], tuple[int, int] | None] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        if prefix_cache is not None:
            r.register(PrefixCacheCounters(prefix_cache))
        self.num_requests_running = Gauge(
            "swiftops_num_requests_running", "Requests generating now (admitted by the server).", registry=r
        )
        self.num_requests_running.set_function(running)
        self.num_requests_waiting = Gauge(
            "swiftops_num_requests_waiting", "Requests queued, waiting for a slot.", registry=r
        )
        self.num_requests_waiting.set_function(waiting)
        self.engine_sequences_running = Gauge(
            "swiftops_engine_sequences_running", "Sequences in the engine's running batch.", registry=r
        )
        self.engine_sequences_running.set_function(engine_running)
        self.engine_sequences_waiting = Gauge(
            "swiftops_engine_sequences_waiting", "Sequences queued inside the engine.", registry=r
        )
        self.engine_sequences_waiting.set_function(engine_waiting)
        self.request_success = Counter(
            "swiftops_request_success",
            "Finished requests answered with a 2xx status, by route and status.",
            ["route", "status"],
            registry=r,
        )
        self.request_failure = Counter(
            "swiftops_request_failure",
            "Requests that failed (4xx, 5xx, 499 client disconnected), by route and status.",
            ["route", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter("swiftops_prompt_tokens", "Prompt tokens of finished requests.", registry=r)
        self.generation_tokens = Counter(
            "swiftops_generation_tokens", "Generated tokens of finished requests.", registry=r
        )
        self.time_to_first_token = Histogram(
            "swiftops_time_to_first_token_seconds",
            "Arrival to first generated text (streaming requests).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            "swiftops_inter_token_latency_seconds",
            "Time between successive streamed chunks.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e_request_latency = Histogram(
            "swiftops_e2e_request_latency_seconds",
            "Arrival to last byte of generation requests.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_queue_time = Histogram(
            "swiftops_request_queue_time_seconds",
            "Time a request waited for an admission slot.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def record_outcome(self, route: str, status: int) -> None:
        counter = self.request_success if 200 <= status < 300 else self.request_failure
        counter.labels(route=route, status=str(status)).inc()

    def record_tokens(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens.inc(max(0, prompt_tokens))
        self.generation_tokens.inc(max(0, completion_tokens))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class PrefixCacheCounters:
    """The engine's prefix-cache counters, read at scrape time: prompt tokens looked up and found, under our names
    and vLLM's (`vllm:prefix_cache_queries`, `vllm:prefix_cache_hits`), so vLLM's hit-rate panels work unchanged.
    Nothing is exported while the engine does not count (prefix caching off, or a backend that does not report)."""

    NAMES = (
        ("swiftops_prefix_cache_queries", "swiftops_prefix_cache_hits"),
        ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits"),
    )

    def __init__(self, source: Callable[[], tuple[int, int] | None]) -> None:
        self.source = source

    def describe(self) -> list:
        return []  # samples exist only while the engine counts: nothing to check for name clashes up front

    def collect(self) -> Iterator[CounterMetricFamily]:
        counts = self.source()
        if counts is None:
            return
        queries, hits = counts
        for queries_name, hits_name in self.NAMES:
            yield CounterMetricFamily(queries_name, "Prompt tokens looked up in the prefix cache.", value=queries)
            yield CounterMetricFamily(hits_name, "Prompt tokens found in the prefix cache (not computed).", value=hits)
