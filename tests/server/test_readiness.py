"""Readiness: 503 in OpenAI's shape until the warm-up generation is done, then 200.

The app runs in-process over an `InferClient` engine (the shared server behind it), so no model
loads here; starlette's TestClient runs the lifespan (and so the warm-up) only inside `with`.
"""
from __future__ import annotations

import time

from starlette.testclient import TestClient

from swiftops.engines.client import InferClient
from swiftops.protocol.settings import ServerSettings
from swiftops.server.app import create_app


def test_not_ready_before_warm_up_then_ready(server, api_key, served_name):
    engine = InferClient(base_url=server.url + "/v1", api_key=api_key)
    try:
        app = create_app(engine, ServerSettings(served_model_name="front"))
        cold = TestClient(app)  # no lifespan: no warm-up has run
        assert cold.get("/health").status_code == 200
        ready = cold.get("/ready")
        assert ready.status_code == 503 and ready.json()["error"]["type"] == "service_unavailable"
        refused = cold.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert refused.status_code == 503 and "warming up" in refused.json()["error"]["message"]
        with TestClient(app) as warm:
            for _ in range(100):
                if warm.get("/ready").status_code == 200:
                    break
                time.sleep(0.05)
            assert warm.get("/ready").json() == {"status": "ready", "model": "front"}
            answer = warm.post("/v1/chat/completions", json={"model": "front", "max_tokens": 3,
                                                             "messages": [{"role": "user", "content": "hi"}]})
            assert answer.status_code == 200 and answer.json()["model"] == "front"
            # The base model is also reachable by its engine's own name.
            assert warm.post("/v1/chat/completions", json={"model": served_name, "max_tokens": 1, "messages": [
                {"role": "user", "content": "hi"}]}).status_code == 200
    finally:
        engine.close()
