"""Fake LMDeploy async engine (lmdeploy.serve.core.AsyncEngine's outer surface)."""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any, Optional

SCRIPT = ["Hello", " there", ",", " I", " am", " a", " tiny", " fake", " model", "."]
STEP_SECONDS = 0.002


class ErrorCode(str):
    pass


class RequestError(RuntimeError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class GenOut:
    response: str
    input_token_len: int
    generate_token_len: int
    finish_reason: Optional[str] = None
    token_ids: Optional[list[int]] = None
    logprobs: Optional[list[dict[int, float]]] = None


@dataclass
class PreprocessedRequest:
    session_id: int
    input_ids: list[int]
    gen_config: Any
    adapter_name: Optional[str]
    messages: Any


class FakeAsyncEngine:
    instances: list["FakeAsyncEngine"] = []

    def __init__(self, model_path: str, model_name: str = None, backend: str = "turbomind", backend_config: Any = None,
                 trust_remote_code: bool = False, **kwargs: Any) -> None:
        self.model_path, self.model_name, self.backend, self.backend_config = model_path, model_name, backend, \
            backend_config
        self.kwargs = kwargs
        self.session_len = getattr(backend_config, "session_len", None) or 256
        from transformers import AutoTokenizer  # real token ids: the engine decodes them itself, as with LMDeploy

        tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.word_ids = {word: tokenizer.encode(word, add_special_tokens=False) for word in SCRIPT}
        self.loop = None
        self.requests: list[PreprocessedRequest] = []
        self.cancelled: list[int] = []
        self.running: set[int] = set()
        self.closed = False
        self.fail_with: Optional[BaseException] = None
        FakeAsyncEngine.instances.append(self)

    def start_loop(self, loop: asyncio.AbstractEventLoop, use_async_api: bool = False) -> bool:
        self.loop = loop
        return True

    async def preprocess(self, messages: Any, session_id: int, gen_config: Any = None, do_preprocess: bool = True,
                         adapter_name: Optional[str] = None, input_ids: Optional[list[int]] = None,
                         **kwargs: Any) -> PreprocessedRequest:
        assert asyncio.get_running_loop() is self.loop, "LMDeploy is used from the loop it was started on"
        if (messages is None) == (input_ids is None):
            raise RequestError("invalid_request", "You must specify exactly one of messages or input_ids.")
        ids = input_ids if input_ids is not None else [1] * 8
        if len(ids) >= self.session_len:
            raise RequestError("context_length_exceeded", f"Input length ({len(ids)}) must be smaller than "
                                                          f"the model context length ({self.session_len}).")
        request = PreprocessedRequest(session_id, ids, gen_config, adapter_name, messages)
        self.requests.append(request)
        return request

    async def generate(self, request: PreprocessedRequest, stream_response: bool = True):
        if self.fail_with is not None:
            raise self.fail_with
        g = request.gen_config
        words = list(SCRIPT)
        if g.do_sample:
            random.Random(g.random_seed).shuffle(words)
        self.running.add(request.session_id)
        tokens = [token_id for word in words for token_id in self.word_ids[word]]  # the script's token ids
        produced = 0
        ignore_eos = bool(getattr(g, "ignore_eos", False))
        try:
            # One token per step. The script ends with EOS ("stop") unless ignore_eos, which repeats it up to
            # max_new_tokens.
            while ignore_eos or produced < len(tokens):
                await asyncio.sleep(STEP_SECONDS)
                token_id = tokens[produced % len(tokens)]
                produced += 1
                logprobs = None
                if g.logprobs is not None:
                    position = {token_id: -0.5}
                    for k in range(g.logprobs - 1):
                        position[200 + k] = -1.0 - k
                    logprobs = [position]
                # `response` (LMDeploy's own text) is not what swiftops reads: it decodes the token ids itself.
                yield GenOut("", len(request.input_ids), produced, None, [token_id], logprobs)
                if produced >= g.max_new_tokens:
                    yield GenOut("", len(request.input_ids), produced, "length", [])
                    return
            yield GenOut("", len(request.input_ids), produced, "stop", [])
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled.append(request.session_id)
            raise
        finally:
            self.running.discard(request.session_id)

    def close(self) -> None:
        self.closed = True
