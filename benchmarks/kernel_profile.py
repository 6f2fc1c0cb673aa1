"""Where the GPU time of a pt-engine workload goes, by phase and by kernel family.

    python -m benchmarks.kernel_profile --shape 7b --requests 256 --prompt_len 512 --output_len 256 --out prof.json

Times the whole workload, then prefill alone (every request with max_tokens 1) at the engine's default prefill
budget and at the budgets given by --prefill_budgets, then records torch.profiler's CUDA kernel times of a short
run (prefill and a few decode steps) grouped into GEMMs, attention, norms, elementwise and the rest. The engine
runs in its own thread; CUPTI sees its kernels all the same. `--shared_prefix N` gives every prompt the same first
N tokens (with the prefix cache on, the profiled runs find it cached by the timed ones).
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from typing import Any

import torch

FAMILIES = (("attention", ("_paged_attention", "_merge_splits")), ("rmsnorm", ("_rms_norm",)),
            ("gemm", ("gemm", "cutlass", "sm90", "xmma", "nvjet", "cublas")),
            ("copy/index", ("index", "copy", "gather", "scatter", "cat")),
            ("elementwise", ("elementwise", "vectorized", "unrolled", "reduce")))


def _family(name: str) -> str:
    lowered = name.lower()
    for family, keys in FAMILIES:
        if any(k in lowered for k in keys):
            return family
    return "other"


def _run(engine: Any, prompts: list[list[int]], output_len: int) -> float:
    from swiftops import InferRequest, RequestConfig
    config = RequestConfig(max_tokens=output_len, temperature=0, ignore_eos=True)
    torch.cuda.synchronize()
    start = time.perf_counter()
    engine.infer([InferRequest(prompt=p) for p in prompts], config, use_tqdm=False)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def _kernels(engine: Any, prompts: list[list[int]], output_len: int) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        wall = _run(engine, prompts, output_len)
    per_family: dict[str, float] = defaultdict(float)
    per_kernel: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.key_averages():
        cuda_us = getattr(event, "self_device_time_total", 0) or getattr(event, "self_cuda_time_total", 0)
        if cuda_us <= 0 or event.key.startswith(("cuda", "aten::")):
            continue
        per_family[_family(event.key)] += cuda_us / 1e3
        per_kernel[event.key][0] += cuda_us / 1e3
        per_kernel[event.key][1] += event.count
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:25]
    return {"wall_ms": wall * 1e3, "gpu_ms_by_family": dict(per_family),
            "gpu_ms_total": sum(per_family.values()),
            "top_kernels": [{"name": k[:120], "ms": round(v[0], 2), "count": v[1]} for k, v in top]}


def main() -> None:
    from benchmarks.bench_model import build_model
    from benchmarks.step_trace import StepTrace
    from swiftops import PtEngine

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="7b")
    parser.add_argument("--model_dir", default=None, help="default: .bench-models/qwen2.5-<shape>-bf16")
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--prompt_len", type=int, default=512)
    parser.add_argument("--output_len", type=int, default=256)
    parser.add_argument("--shared_prefix", type=int, default=0,
                        help="the first N tokens of every prompt are the same (a shared system prompt)")
    parser.add_argument("--prefill_budgets", default="8192")
    parser.add_argument("--profile_requests", type=int, default=64)
    parser.add_argument("--profile_output_len", type=int, default=16)
    parser.add_argument("--engine_kwargs", default="{}")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    path = build_model(args.model_dir or f".bench-models/qwen2.5-{args.shape}-bf16", args.shape)
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(10, vocab - 10, (args.requests, args.prompt_len), generator=gen).tolist()
    prompts = [prompts[0][: args.shared_prefix] + p[args.shared_prefix :] for p in prompts]
    record: dict[str, Any] = {"args": vars(args), "device": torch.cuda.get_device_name()}
    budgets = [None] + [int(b) for b in args.prefill_budgets.split(",") if b]
    for budget in budgets:
        kwargs = json.loads(args.engine_kwargs)
        if budget:
            kwargs["max_num_batched_tokens"] = budget
        engine = PtEngine(str(path), torch_dtype="bfloat16", **kwargs)
        _run(engine, prompts[:4], 4)
        entry: dict[str, Any] = {"kwargs": kwargs,
                                 "max_num_batched_tokens": engine._core.scheduler.max_num_batched_tokens}
        trace = StepTrace(engine)
        trace.start()
        entry["prefill_only_s"] = _run(engine, prompts, 1)
        entry["prefill_only_steps"] = trace.stop()
        trace.start()
        entry["whole_s"] = _run(engine, prompts, args.output_len)
        entry["whole_steps"] = trace.stop()
        entry["whole_tok_s"] = args.requests * args.output_len / entry["whole_s"]
        entry["b1_tok_s"] = args.output_len / _run(engine, prompts[:1], args.output_len)
        entry["steps"] = engine._core.steps
        if budget is None:
            entry["kernels_prefill"] = _kernels(engine, prompts[: args.profile_requests], 1)
            entry["kernels_short_run"] = _kernels(engine, prompts[: args.profile_requests], args.profile_output_len)
            entry["kernels_b1"] = _kernels(engine, prompts[:1], 32)
            # decode at the full batch: short prompts, so the prefill is a small share of the profile
            entry["kernels_decode"] = _kernels(engine, [p[:16] for p in prompts], 32)
        record[f"budget_{budget or 'default'}"] = entry
        print(json.dumps({k: v for k, v in entry.items() if not k.startswith("kernels")}), flush=True)
        engine.close()
        del engine
        if args.out:
            with open(args.out, "w") as f:
                json.dump(record, f, indent=1)
    print(json.dumps(record, indent=1)[:12000])


if __name__ == "__main__":
    main()
