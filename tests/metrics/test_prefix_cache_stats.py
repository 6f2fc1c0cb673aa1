"""InferStats' prefix-cache figures: counted from when tracking starts, kept after the engine is closed."""
from __future__ import annotations

from swiftops import InferStats


class Counters:
    """Stands in for an engine's `prefix_cache_stats` (a plain callable: (queried, hit) tokens, None once closed)."""

    def __init__(self) -> None:
        self.value = (100, 40)

    def __call__(self):
        return self.value


def test_the_hit_rate_covers_only_the_tracked_run_and_survives_the_engine():
    counters = Counters()
    stats = InferStats()
    stats.track_prefix_cache(counters)  # 100 / 40 before this run: not counted
    stats.start("a")
    counters.value = (300, 190)
    stats.finish("a", prompt_tokens=200, completion_tokens=5)
    stats.track_prefix_cache(counters)  # another infer() call on the same engine keeps the first baseline
    counters.value = None  # the engine was closed before compute()
    summary = stats.compute()
    assert (summary["prefix_cache_queries"], summary["prefix_cache_hits"]) == (200, 150)
    assert summary["prefix_cache_hit_rate"] == 0.75


def test_no_figures_from_an_engine_that_does_not_count():
    stats = InferStats()
    stats.track_prefix_cache(lambda: None)  # caching off, or a backend that does not report
    stats.start("a")
    stats.finish("a", prompt_tokens=10, completion_tokens=2)
    assert "prefix_cache_hit_rate" not in stats.compute()
