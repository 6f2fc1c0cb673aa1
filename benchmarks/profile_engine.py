"""Where a pt-engine step's time goes: the same engine timed several times in one process, at its default
max_model_len and at prompt + output, with cProfile over the engine thread's steps.

    python -m benchmarks.profile_engine --shape 0.5b --requests 256 --prompt_len 128 --output_len 256 --out prof.json
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import tempfile
import time
from typing import Any

import torch


def _timed(engine: Any, prompts: list[list[int]], output_len: int) -> float:
    from swiftops import InferRequest, RequestConfig
    config = RequestConfig(max_tokens=output_len, temperature=0, ignore_eos=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    responses = engine.infer([InferRequest(prompt=p) for p in prompts], config, use_tqdm=False)
    seconds = time.perf_counter() - start
    assert sum(r.usage.completion_tokens for r in responses) == len(prompts) * output_len
    return len(prompts) * output_len / seconds


def _profiled(engine: Any, prompts: list[list[int]], output_len: int, top: int) -> str:
    """cProfile of the engine thread's steps during one run (the engine loop calls `_step` once per step)."""
    core = engine._core
    profile = cProfile.Profile()
    step = core._step

    def profiled_step(plan: Any) -> None:
        profile.enable()
        try:
            step(plan)
        finally:
            profile.disable()

    core._step = profiled_step
    try:
        _timed(engine, prompts, output_len)
    finally:
        core._step = step
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def main() -> None:
    from benchmarks.bench_model import build_model
    from swiftops import PtEngine

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="0.5b")
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--prompt_len", type=int, default=128)
    parser.add_argument("--output_len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    path = build_model(tempfile.mkdtemp(prefix="profile-"), args.shape)
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(10, vocab - 10, (args.requests, args.prompt_len), generator=gen).tolist()
    record: dict[str, Any] = {"args": vars(args)}
    for label, kwargs in (("default", {}), ("tuned", {"max_model_len": args.prompt_len + args.output_len})):
        engine = PtEngine(str(path), torch_dtype="bfloat16", **kwargs)
        _timed(engine, prompts[:4], 16)
        figures = {"max_model_len": engine.max_model_len,
                   "main_tok_s": [_timed(engine, prompts, args.output_len) for _ in range(args.repeats)],
                   "b1_tok_s": [_timed(engine, prompts[:1], args.output_len) for _ in range(args.repeats)]}
        steps_before = engine._core.steps
        figures["profile_main"] = _profiled(engine, prompts, args.output_len, args.top)
        figures["steps_main"] = engine._core.steps - steps_before
        figures["pipelined_steps"] = engine._core.pipelined_steps
        figures["profile_b1"] = _profiled(engine, prompts[:1], args.output_len, args.top)
        engine.close()
        record[label] = figures
        print(label, {k: v for k, v in figures.items() if not k.startswith("profile")}, flush=True)
        print(figures["profile_main"][:4000], flush=True)
        print(figures["profile_b1"][:3000], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
