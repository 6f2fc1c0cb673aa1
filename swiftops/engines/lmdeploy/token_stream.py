"""A prompt's generated token ids straight from LMDeploy's engine instance, without `AsyncEngine.generate`.

`AsyncEngine.generate` detokenizes every running sequence at every step (`detokenize_incrementally`), on the
event loop that also runs LMDeploy's engine, and swiftops decodes the same tokens again with its own
`TokenDecoder` (which also matches stop strings): that is per-token Python work done twice. The engine instance
underneath (`AsyncEngine.engine.create_instance()`, what `generate` itself drives) hands out token ids only; on
an H100 it made 11-14% more tokens a second than `generate` on the 0.5B shape (benchmarks/RESULTS.md, offline
section, `--lmdeploy_instance`). So prompts given as token ids (every text prompt: the chat template is
rendered by swiftops) go to the instance; media prompts, which need LMDeploy's own preprocessing, keep
`generate`.

What `generate` adds around the instance is kept: the request's GenerationConfig completed by the AsyncEngine
(`_determine_gen_config`: EOS and the checkpoint's stop ids, greedy settings), an instance from the same pool
(so no more requests run at once than LMDeploy allows), a stop token left out of the ids and counted as
"stop", and a cancelled request cancelled in the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from swiftops.protocol import BadRequestError, EngineError


@dataclass
class TokenStep:
    """New tokens of one choice (a stop token left out) and, on the last step, why it ended."""

    token_ids: list[int]
    logprobs: list[dict[int, float]] | None  # one {token_id: logprob} per new token, when asked for
    finish_reason: str | None
    generated: int  # tokens generated so far, a stop token not counted (LMDeploy's generate_token_len)
    prompt_tokens: int


async def instance_steps(
    engine: Any,
    session_id: int,
    input_ids: list[int],
    gen_config: Any,
    adapter_name: str | None,
    every_step: bool,
) -> AsyncIterator[TokenStep]:
    """The choice's tokens as LMDeploy's engine makes them: each step's with `every_step` (a stream, or stop strings
    to watch), otherwise all of them at the end (the PyTorch engine's instance answers every step either way;
    decoding them once at the end costs one decode per request instead of one per token). Leaving early (a stop
    string, a disconnect) cancels the request in the engine."""
    from lmdeploy.messages import ResponseType

    config = engine._determine_gen_config(input_ids, gen_config)  # as generate would run it (its preprocess does)
    stop_ids = set() if config.ignore_eos else set(config.stop_token_ids or [])
    pool = engine.session_mgr.request_handle_pool
    handle = await pool.get()
    generated, stopped, done = 0, False, False
    held_ids: list[int] = []
    held_logprobs: list[dict[int, float]] | None = None
    stream = handle.async_stream_infer(
        session_id, input_ids, gen_config=config, adapter_name=adapter_name, stream_output=every_step
    )
    try:
        async for out in stream:
            status = out.status
            if status not in (ResponseType.SUCCESS, ResponseType.FINISH, ResponseType.CANCEL):
                done = True  # the engine has given the request up
                if status == ResponseType.INPUT_LENGTH_ERROR:
                    raise BadRequestError(
                        f"the prompt ({len(input_ids)} tokens) does not fit the model's context",
                        param="messages",
                        code="context_length_exceeded",
                    )
                raise EngineError(f"LMDeploy's engine failed while generating: {status.name}")
            ids = list(out.token_ids or [])
            logprobs = list(out.logprobs) if out.logprobs is not None else None
            if ids and ids[-1] in stop_ids:  # the engine stops after a stop token; it is not text
                ids.pop()
                stopped = True
                if logprobs:
                    logprobs = logprobs[: len(ids)]
            generated += len(ids)
            if not every_step:  # the engine hands out every step's ids anyway: one step at the end
                held_ids += ids
                if logprobs is not None:
                    held_logprobs = (held_logprobs or []) + logprobs
                ids, logprobs = held_ids, held_logprobs
            if status == ResponseType.SUCCESS:
                if ids and every_step:
                    yield TokenStep(ids, logprobs, None, generated, len(input_ids))
                continue
            done = True
            reason = "abort" if status == ResponseType.CANCEL else "stop" if stopped else "length"
            yield TokenStep(ids, logprobs, reason, generated, len(input_ids))
            return
        done = True
        raise EngineError("LMDeploy's engine ended a generation without a finish")
    finally:
        try:
            if not done:  # left early (a stop string, a disconnect): the engine would go on generating for nobody
                await asyncio.shield(handle.async_cancel(session_id))
            await stream.aclose()  # the instance's own cleanup ends the session
        finally:
            pool.put(handle)
