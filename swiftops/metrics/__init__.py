"""Inference statistics (`InferStats`) and, for the server, Prometheus collectors."""

from swiftops.metrics.stats import InferStats

__all__ = ["InferStats"]
