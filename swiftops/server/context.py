"""What every handler needs, built once per app by `create_app`."""

from __future__ import annotations

from dataclasses import dataclass

from swiftops.engines.base import InferEngine
from swiftops.metrics.prometheus import ServerMetrics
from swiftops.protocol.settings import ServerSettings
from swiftops.server.admission import AdmissionController
from swiftops.server.lifecycle import Lifecycle
from swiftops.server.request_log import RequestRecorder
from swiftops.server.served_models import ModelRegistry


@dataclass
class ServerContext:
    engine: InferEngine
    settings: ServerSettings
    models: ModelRegistry
    admission: AdmissionController
    metrics: ServerMetrics
    lifecycle: Lifecycle
    results: RequestRecorder | None
