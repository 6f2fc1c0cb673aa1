"""A stand-in for the lmdeploy package with the shapes swiftops uses, for tests on machines without LMDeploy.

Only the library's outermost surface is faked: the config classes, `archs.autoget_backend_config` /
`archs.get_task`, the async engine's `start_loop`, `preprocess`, `generate` (GenOut-shaped items:
new text, cumulative token counts, a finish_reason on the last), `_determine_gen_config` and `close`, and the
engine instance under it (`engine.create_instance()`, its pool `session_mgr.request_handle_pool`,
`async_stream_infer` yielding `messages.EngineOutput`s, `async_cancel`). The "model" answers
from a fixed script of words, so tests can predict text, lengths, stops and logprobs.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.0-fake"


class _Config:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        for key, value in kwargs.items():
            setattr(self, key, value)


class TurbomindEngineConfig(_Config):
    pass


class PytorchEngineConfig(_Config):
    pass


class VisionConfig(_Config):
    pass


class GenerationConfig(_Config):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("random_seed", None)
        kwargs.setdefault("logprobs", None)
        kwargs.setdefault("max_new_tokens", 512)
        kwargs.setdefault("do_sample", False)
        super().__init__(**kwargs)
        assert 0 <= kwargs.get("temperature", 0.8) <= 2
