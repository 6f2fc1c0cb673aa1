"""Engines: the `InferEngine` interface and one module per backend (imported lazily)."""

from swiftops.engines.base import InferEngine

__all__ = ["InferEngine"]
