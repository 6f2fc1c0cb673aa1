"""LMDeploy's PyTorch engine on the benchmark's token ids, driven directly (not through swiftops).

    python -m benchmarks.lmdeploy_peer --model PATH --prompts P.json --out R.json --max_batch_size 256 \
        --dtype bfloat16 [--session_len 32768] [--also_instance]

Builds LMDeploy's own `AsyncEngine` (what `lmdeploy serve` and `pipeline` run) on the PyTorch backend with
`PytorchEngineConfig(max_batch_size=..., dtype=..., session_len=...)`, nothing else set, binds it to this
process's event loop, and submits every request of a set at once: `preprocess(input_ids=..., do_preprocess=False)`
then `generate(...)`, greedy (`do_sample=False`, which LMDeploy turns into top_k=1) with `ignore_eos=True`.
That path includes LMDeploy's incremental detokenization, as its server does. `--also_instance` then times
the main set once more on the engine underneath (`Engine.create_instance().async_stream_infer`, token ids
in and out, no detokenization): the fastest LMDeploy can go here, for reference.
Imports neither swiftops nor pydantic: it runs in the GPU machine's python with the kit on PYTHONPATH.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import time
from typing import Any

from benchmarks.run_record import RunRecord, exit_with, WarningLog, device_info, load_prompts, memory_info, run_figures, sync

_session_ids = itertools.count(1)


def _effective(engine: Any) -> dict[str, Any]:
    config = engine.backend_config
    found = {"session_len": int(engine.session_len), "backend": engine.backend}
    for name in ("max_batch_size", "cache_max_entry_count", "block_size", "max_prefill_token_num", "eager_mode",
                 "enable_prefix_caching", "dtype", "num_gpu_blocks", "num_cpu_blocks", "enable_mp_engine"):
        if hasattr(config, name):
            value = getattr(config, name)
            found[name] = value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
    found["max_model_len"] = found["session_len"]  # LMDeploy's name for the context limit
    return found


async def _async_engine_set(engine: Any, lmdeploy: Any, sets: list[list[int]], out_len: int) -> int:
    async def one(ids: list[int]) -> int:
        gen = lmdeploy.GenerationConfig(max_new_tokens=out_len, ignore_eos=True, do_sample=False)
        request = await engine.preprocess(None, next(_session_ids), gen_config=gen, input_ids=list(ids),
                                          do_preprocess=False)
        last = None
        async for out in engine.generate(request, stream_response=False):
            last = out
        if last is None or last.finish_reason not in ("length", "stop"):
            raise RuntimeError(f"LMDeploy ended a request with {getattr(last, 'finish_reason', None)!r}")
        return int(last.generate_token_len)

    return sum(await asyncio.gather(*(one(p) for p in sets)))


async def _instance_set(engine: Any, lmdeploy: Any, sets: list[list[int]], out_len: int) -> int:
    from lmdeploy.pytorch.engine.request import ResponseType

    async def one(ids: list[int]) -> int:
        instance = engine.engine.create_instance()
        gen = lmdeploy.GenerationConfig(max_new_tokens=out_len, ignore_eos=True, do_sample=False, top_k=1)
        produced, status = 0, None
        async for out in instance.async_stream_infer(next(_session_ids), list(ids), gen_config=gen):
            produced += len(out.token_ids)  # each output carries only the new tokens
            status = out.status
        if status != ResponseType.FINISH:
            raise RuntimeError(f"LMDeploy's engine instance ended with {status}")
        return produced

    return sum(await asyncio.gather(*(one(p) for p in sets)))


def _build(args: argparse.Namespace, record: RunRecord) -> tuple[Any, Any]:
    """The AsyncEngine, built outside any running event loop (as swiftops' LmdeployEngine does, which ran on
    the H100): LMDeploy binds its loop later, in start_loop."""
    import lmdeploy
    from lmdeploy.serve.core.async_engine import AsyncEngine

    logging.getLogger("lmdeploy").setLevel(logging.WARNING)  # not two INFO lines per request
    config_kwargs: dict[str, Any] = {}
    if args.max_batch_size:  # 0: the library's own default, as `swiftops deploy --infer_backend lmdeploy` leaves it
        config_kwargs["max_batch_size"] = args.max_batch_size
    if args.dtype:
        config_kwargs["dtype"] = args.dtype
    if args.session_len:
        config_kwargs["session_len"] = args.session_len
    record.set(lmdeploy=lmdeploy.__version__, engine_config_kwargs=config_kwargs, api="AsyncEngine")
    engine = AsyncEngine(args.model, backend="pytorch", backend_config=lmdeploy.PytorchEngineConfig(**config_kwargs))
    return lmdeploy, engine


async def _run(engine: Any, lmdeploy: Any, args: argparse.Namespace, prompts: dict[str, Any], record: RunRecord,
               t0: float) -> None:
    engine.start_loop(asyncio.get_running_loop(), use_async_api=True)
    record.set(startup_s=round(time.perf_counter() - t0, 2), effective=_effective(engine))
    print(f"  lmdeploy ready in {record.data['startup_s']} s: {record.data['effective']}", flush=True)
    try:
        warmup = prompts.get("warmup") or []
        if warmup:
            t0 = time.perf_counter()
            await _async_engine_set(engine, lmdeploy, warmup, int(prompts.get("warmup_output_len", 8)))
            record.set(warmup_s=round(time.perf_counter() - t0, 2))
        out_len = int(prompts["output_len"])
        todo = [(name, sets, _async_engine_set) for name, sets in prompts["sets"].items()]
        if args.also_instance and "main" in prompts["sets"]:
            todo.append(("main_instance", prompts["sets"]["main"], _instance_set))
        for name, sets, how in todo:
            try:
                sync()
                t0 = time.perf_counter()
                produced = await how(engine, lmdeploy, sets, out_len)
                sync()
                record.data["runs"][name] = run_figures(name, len(sets), len(sets) * out_len, produced,
                                                        time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001 - recorded; the other sets still run
                record.data["runs"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:1000]}
                record.fail(f"set {name}", exc)
            record.save()
    finally:
        record.set(memory=memory_info())
        engine.close()


def run(argv: list[str] | None = None) -> int:
    """The whole run; returns the exit status (0: every set produced what it should)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max_batch_size", type=int, default=256)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--session_len", type=int, default=None,
                        help="LMDeploy's context limit (default: the model's max_position_embeddings)")
    parser.add_argument("--also_instance", action="store_true",
                        help="also time the main set on the engine instance, without detokenization")
    parser.add_argument("--label", default="lmdeploy")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings = WarningLog()
    logging.getLogger().addHandler(warnings)
    logging.getLogger("lmdeploy").addHandler(warnings)  # LMDeploy's logger does not propagate to the root
    record = RunRecord(args.out, args.label, **device_info())
    def body() -> None:
        prompts = load_prompts(args.prompts)
        t0 = time.perf_counter()
        lmdeploy, engine = _build(args, record)
        asyncio.run(_run(engine, lmdeploy, args, prompts, record, t0))

    return record.capture(body, warnings)


def main() -> None:
    exit_with(run)


if __name__ == "__main__":
    main()
