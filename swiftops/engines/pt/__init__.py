"""The pt backend: transformers models with continuous batching and a paged KV cache."""

from swiftops.engines.pt.engine import PtEngine

__all__ = ["PtEngine"]
