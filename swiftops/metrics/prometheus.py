"""Prometheus collectors of the server, on a private registry (one per app, so tests can run several).

Names follow vLLM's (`vllm:num_requests_running` -> `swiftops_num_requests_running`) so dashboards
carry over with a prefix change.

With several API-server processes (`--api_server_count`), whichever process a scrape reaches answers for all of
them: counters and histograms live in prometheus_client's multiprocess files (`use_shared_metrics`, summed at
scrape time), and the gauges are read from counts that are already global (the shared admission counts, the
engine's batch as every API server hears it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

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
        shared_dir: str | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._shared_dir = shared_dir
        self._live: list[object] = [
            LiveGauges(
                (
                    ("swiftops_num_requests_running", "Requests generating now (admitted by the server).", running),
                    ("swiftops_num_requests_waiting", "Requests queued, waiting for a slot.", waiting),
                    ("swiftops_engine_sequences_running", "Sequences in the engine's running batch.", engine_running),
                    ("swiftops_engine_sequences_waiting", "Sequences queued inside the engine.", engine_waiting),
                )
            )
        ]
        if prefix_cache is not None:
            self._live.append(PrefixCacheCounters(prefix_cache))
        for collector in self._live:
            r.register(collector)  # type: ignore[arg-type]
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
        if self._shared_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self._shared_dir)
        for collector in self._live:
            registry.register(collector)  # type: ignore[arg-type]
        return generate_latest(registry)


def use_shared_metrics(directory: str) -> None:
    """Counters and histograms made after this call live in prometheus_client's multiprocess files in `directory`
    (one per process, summed by whichever process is scraped). Called by each API-server process of a deployment
    with several, before its app is built."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory  # where the value files go (read when each is made)
    values.ValueClass = values.MultiProcessValue()


class LiveGauges:
    """Gauges read at scrape time from callables: (name, help, read) each."""

    def __init__(self, gauges: tuple[tuple[str, str, Callable[[], float]], ...]) -> None:
        self.gauges = gauges

    def describe(self) -> list:
        return [GaugeMetricFamily(name, text) for name, text, _ in self.gauges]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, text, read in self.gauges:
            yield GaugeMetricFamily(name, text, value=float(read()))


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
