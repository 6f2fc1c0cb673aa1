"""What the API-server processes of one deployment (`--api_server_count`) share, in one private directory: the
admission counts (`admission`, see swiftops.server.admission_counts) and prometheus_client's multiprocess files
(`metrics/`), so that limits and /metrics stay those of the whole deployment."""

from __future__ import annotations

import os
from dataclasses import dataclass

from swiftops.metrics.prometheus import use_shared_metrics
from swiftops.server.admission_counts import SharedCounts


@dataclass(frozen=True)
class SharedState:
    directory: str

    @property
    def metrics_dir(self) -> str:
        return os.path.join(self.directory, "metrics")

    @property
    def admission_path(self) -> str:
        return os.path.join(self.directory, "admission")

    @classmethod
    def create(cls, directory: str) -> SharedState:
        """The first API server's: zeroed counts and an empty metrics directory, then this process's metrics in it."""
        state = cls(directory)
        os.makedirs(state.metrics_dir, mode=0o700, exist_ok=True)
        SharedCounts(state.admission_path, create=True).close()
        use_shared_metrics(state.metrics_dir)
        return state

    def join(self) -> SharedState:
        """A further API server's: its metrics into the same directory (before its app makes any)."""
        use_shared_metrics(self.metrics_dir)
        return self

    def counts(self) -> SharedCounts:
        return SharedCounts(self.admission_path)
