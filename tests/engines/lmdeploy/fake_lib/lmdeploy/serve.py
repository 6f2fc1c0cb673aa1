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
        self.preprocessed = 0  # preprocess() calls (media prompts; token-id prompts go to the engine instance)
        self.fail_status: Any = None  # a ResponseType the engine instance answers with instead of tokens
        self.eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        # AsyncEngine.engine (the PyTorch / TurboMind engine) and its pool of instances, as AsyncEngine has them
        self.engine = _FakeEngine(self)
        size = getattr(backend_config, "max_batch_size", None) or 4
        self.session_mgr = _SessionManager(_HandlePool(self.engine, size))
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
        self.preprocessed += 1
        return request

    def _script(self, g: Any) -> list[int]:
        words = list(SCRIPT)
        if g.do_sample:
            random.Random(g.random_seed).shuffle(words)
        return [token_id for word in words for token_id in self.word_ids[word]]  # the script's token ids

    def _determine_gen_config(self, input_ids: list[int], gen_config: Any = None) -> Any:
        """AsyncEngine's completion of a request's config: the EOS among the stop ids, greedy as top_k=1."""
        import copy

        g = copy.deepcopy(gen_config)
        g.stop_token_ids = sorted(set(getattr(g, "stop_token_ids", None) or []) | {self.eos_id})
        if not g.do_sample:
            g.top_k = 1
        return g

    async def generate(self, request: PreprocessedRequest, stream_response: bool = True):
        if self.fail_with is not None:
            raise self.fail_with
        g = request.gen_config
        self.running.add(request.session_id)
        tokens = self._script(g)
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


class _FakeEngine:
    def __init__(self, core: FakeAsyncEngine) -> None:
        self.core = core

    def create_instance(self) -> "_FakeInstance":
        return _FakeInstance(self.core)


class _HandlePool:
    def __init__(self, engine: _FakeEngine, size: int) -> None:
        self.handles = [engine.create_instance() for _ in range(size)]
        self.pool: Optional[asyncio.Queue] = None
        self.size = size

    async def get(self) -> "_FakeInstance":
        if self.pool is None:
            self.pool = asyncio.Queue()
            for handle in self.handles:
                self.pool.put_nowait(handle)
        return await self.pool.get()

    def put(self, handle: "_FakeInstance") -> None:
        if handle is not None and self.pool is not None:
            self.pool.put_nowait(handle)

    @property
    def num_dispatched(self) -> int:
        return 0 if self.pool is None else self.size - self.pool.qsize()


class _SessionManager:
    def __init__(self, pool: _HandlePool) -> None:
        self.request_handle_pool = pool


class _FakeInstance:
    """The engine instance (lmdeploy.pytorch.engine.EngineInstance): token ids only, a stop token included (the
    engine ends a sequence after it), each step's new ids (LMDeploy 0.18's PyTorch instance ignores
    stream_output and always answers per step)."""

    def __init__(self, core: FakeAsyncEngine) -> None:
        self.core = core

    async def async_stream_infer(self, session_id: int, input_ids: list[int], gen_config: Any = None,
                                 multimodal: Any = None, adapter_name: Optional[str] = None, **kwargs: Any):
        from lmdeploy.messages import EngineOutput, ResponseType

        core = self.core
        assert asyncio.get_running_loop() is core.loop, "LMDeploy is used from the loop it was started on"
        core.requests.append(PreprocessedRequest(session_id, list(input_ids), gen_config, adapter_name, None))
        if core.fail_with is not None:
            raise core.fail_with
        if core.fail_status is not None:
            yield EngineOutput(core.fail_status, [])
            return
        g = gen_config
        tokens = core._script(g)
        stop_ids = set() if g.ignore_eos else set(g.stop_token_ids or [])
        core.running.add(session_id)
        held: list[int] = []
        logprobs: list[dict[int, float]] = []
        produced = 0
        try:
            while True:
                await asyncio.sleep(STEP_SECONDS)
                if session_id in core.cancelled:
                    yield EngineOutput(ResponseType.CANCEL, held, logprobs or None)
                    return
                if g.ignore_eos or produced < len(tokens):
                    token_id = tokens[produced % len(tokens)]
                else:
                    token_id = core.eos_id  # the script is over: EOS, a stop id unless ignore_eos
                produced += 1
                held.append(token_id)
                if g.logprobs is not None:
                    position = {token_id: -0.5}
                    for k in range(g.logprobs - 1):
                        position[200 + k] = -1.0 - k
                    logprobs.append(position)
                if token_id in stop_ids or produced >= g.max_new_tokens:
                    yield EngineOutput(ResponseType.FINISH, held, logprobs or None)
                    return
                yield EngineOutput(ResponseType.SUCCESS, held, logprobs or None)
                held, logprobs = [], []
        finally:
            core.running.discard(session_id)

    async def async_cancel(self, session_id: int) -> None:
        self.core.cancelled.append(session_id)
