"""The start-up heap leaves the cyclic collector's reach while an engine or a server runs, and comes back at
teardown so that what was closed is freed."""
from __future__ import annotations

import gc
import weakref

from starlette.testclient import TestClient

from swiftops import InferRequest, PtEngine, RequestConfig
from swiftops.protocol.settings import ServerSettings
from swiftops.server.app import create_app


def _tracked(obj) -> bool:
    return any(o is obj for o in gc.get_objects())


def test_pt_engine_freezes_its_start_up_heap_and_close_frees_it(tiny_model_dir):
    engine = PtEngine(str(tiny_model_dir), max_batch_size=2)
    try:
        assert gc.get_freeze_count() > 10_000  # torch, transformers and the model, at least
        model = engine.model
        assert not _tracked(model)  # frozen: full collections no longer walk it
        assert engine.infer([InferRequest(prompt="hi")], RequestConfig(max_tokens=2))[0].choices[0].finish_reason in ("stop", "length")
        ref = weakref.ref(model)
        del model
    finally:
        engine.close()
    assert gc.get_freeze_count() == 0
    assert ref() is None  # the closed engine's model was collected, frozen or not


def test_server_freezes_after_start_up_and_thaws_at_shutdown(tiny_model_dir):
    engine = PtEngine(str(tiny_model_dir), max_batch_size=2)
    try:
        app = create_app(engine, ServerSettings())
        assert _tracked(app)  # made after the engine froze its start-up
        with TestClient(app) as client:
            assert gc.get_freeze_count() > 10_000
            assert not _tracked(app)
            assert client.get("/health").status_code == 200
        # the server's teardown collected, and froze the heap again: the engine still runs here
        assert gc.get_freeze_count() > 10_000
    finally:
        engine.close()
    assert gc.get_freeze_count() == 0
    assert _tracked(app)


def test_closing_one_engine_keeps_the_heap_frozen_for_another(tiny_model_dir):
    first = PtEngine(str(tiny_model_dir), max_batch_size=2)
    second = PtEngine(str(tiny_model_dir), max_batch_size=2)
    try:
        ref = weakref.ref(first.model)
        first.close()
        assert ref() is None  # the closed engine's model was freed
        assert gc.get_freeze_count() > 10_000 and not _tracked(second.model)  # the running one stays out of reach
        assert second.infer([InferRequest(prompt="hi")], RequestConfig(max_tokens=2))[0].usage.completion_tokens >= 1
    finally:
        first.close()
        second.close()
    assert gc.get_freeze_count() == 0
