"""Issue 21: LmdeployEngine.close() with generations still running. On the GPU machine closing printed
"RuntimeError: coroutine ignored GeneratorExit" twice: pending choices were left to the interpreter's exit,
which finalizes them without a running loop, so their cleanup (`await stream.aclose()`) could not run.
Now close() cancels them and lets their cleanup finish on the engine's loop, then stops that loop.

LMDeploy cannot run here: its engine is the fake of tests/engines/lmdeploy/fake_lib (its outer surface),
with a generate whose cleanup awaits, as LMDeploy's real one does when it ends a session."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from swiftops.protocol import InferRequest, RequestConfig

FAKE_LIB = Path(__file__).resolve().parents[1] / "engines" / "lmdeploy" / "fake_lib"


@pytest.fixture
def fake_lmdeploy(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKE_LIB))
    for name in [m for m in sys.modules if m == "lmdeploy" or m.startswith("lmdeploy.")]:
        monkeypatch.delitem(sys.modules, name)
    import lmdeploy.serve as serve

    cleaned: list[int] = []
    original = serve.FakeAsyncEngine.generate

    async def generate(self, request, stream_response=True):
        try:
            async for out in original(self, request, stream_response):
                yield out
        finally:
            await asyncio.sleep(0)  # cleanup that needs the loop
            cleaned.append(request.session_id)

    monkeypatch.setattr(serve.FakeAsyncEngine, "generate", generate)
    yield cleaned
    for name in [m for m in sys.modules if m == "lmdeploy" or m.startswith("lmdeploy.")]:
        del sys.modules[name]


def test_close_finishes_running_generations_on_the_engine_loop(fake_lmdeploy, tiny_model_dir):
    from swiftops.engines.lmdeploy import LmdeployEngine

    engine = LmdeployEngine(str(tiny_model_dir))
    core = engine._engine

    async def start():
        stream = await engine.infer_async(InferRequest(messages=[{"role": "user", "content": "hi"}]),
                                          RequestConfig(stream=True, n=2, max_tokens=1000, ignore_eos=True))
        await anext(stream)
        return stream

    loop_thread = engine._loop()
    abandoned = loop_thread.submit(start()).result(timeout=30)  # noqa: F841 - kept alive, never read again
    assert len(core.running) == 2
    engine.close()
    assert core.closed
    assert sorted(core.cancelled) == sorted(r.session_id for r in core.requests)  # both choices cancelled...
    assert sorted(fake_lmdeploy) == sorted(core.cancelled)  # ...and their cleanup ran to its end
    assert not core.running
    assert not loop_thread.thread.is_alive() and loop_thread.loop.is_closed()
    engine.close()  # twice is harmless
