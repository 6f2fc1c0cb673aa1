"""What every handler needs, built once per app by `create_app`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from swiftops.engines.base import InferEngine
from swiftops.metrics.prometheus import ServerMetrics
from swiftops.protocol import BadRequestError
from swiftops.protocol.settings import ServerSettings
from swiftops.server.admission import AdmissionController
from swiftops.server.lifecycle import Lifecycle
from swiftops.server.models import ModelRegistry
from swiftops.server.request_log import ResultWriter


@dataclass
class ServerContext:
    engine: InferEngine
    settings: ServerSettings
    models: ModelRegistry
    admission: AdmissionController
    metrics: ServerMetrics
    lifecycle: Lifecycle
    results: Optional[ResultWriter]

    def check_top_logprobs(self, top_logprobs: Optional[int], param: str) -> None:
        if top_logprobs is not None and top_logprobs > self.settings.max_logprobs:
            raise BadRequestError(f"{param}={top_logprobs} is above this server's limit of "
                                  f"{self.settings.max_logprobs} (--max_logprobs)", param=param)
