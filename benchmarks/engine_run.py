"""One engine of the throughput benchmark, in its own process (started by `benchmarks/throughput.py`).

    python -m benchmarks.engine_run --engine pt --model PATH --prompts P.json --out R.json [--engine_kwargs JSON]
    python -m benchmarks.engine_run --engine hf --model PATH --prompts P.json --out R.json --batch 16

`pt`: swiftops' `PtEngine(model, torch_dtype=..., **engine_kwargs)`, all requests of a set submitted at once.
`hf`: transformers' static `generate` in batches of `--batch` (left-padded, attention mask).
Each set of the prompt file is timed after a warm-up; EOS is ignored and decoding is greedy, so every
request yields exactly `output_len` tokens, which is checked. A process per engine frees all GPU memory
between engines and keeps one engine's crash out of the others' figures.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

from benchmarks.run_record import (RunRecord, WarningLog, device_info, exit_with, load_prompts, memory_info,
                                    timed_run)


def _pt_probe(engine: Any) -> dict[str, Any]:
    """The effective settings the engine chose (defaults included) and whether decode runs CUDA graphs."""
    found: dict[str, Any] = {}
    for name in ("max_batch_size", "max_model_len", "runner_name", "max_num_batched_tokens", "block_size",
                 "uses_cuda_graphs", "paged_check_error"):
        value = getattr(engine, name, None)
        if value is not None:
            found[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    cache = getattr(engine, "kv_cache", None)
    for name in ("num_blocks", "block_size"):
        if cache is not None and getattr(cache, name, None) is not None:
            found[f"kv_cache_{name}"] = int(getattr(cache, name))
    if isinstance(getattr(engine, "fused_kernels", None), dict):  # which layers run our Triton kernels
        found["fused_kernels"] = dict(engine.fused_kernels)
    if isinstance(getattr(engine, "cuda_graphs", None), bool):  # the rewritten engine says so itself
        found["uses_cuda_graphs"] = engine.cuda_graphs
    if "uses_cuda_graphs" not in found:  # older engines keep the graphs on their runner (engine._core.runner)
        core = getattr(engine, "_core", None)
        runner = getattr(core, "runner", None) or getattr(core, "run", None)
        if runner is not None and hasattr(runner, "graphs"):
            found["uses_cuda_graphs"] = runner.graphs is not None
    return found


def run_pt(args: argparse.Namespace, prompts: dict[str, Any], record: RunRecord) -> None:
    from swiftops import InferRequest, PtEngine, RequestConfig

    kwargs = json.loads(args.engine_kwargs or "{}")
    if args.dtype:
        kwargs.setdefault("torch_dtype", args.dtype)
    record.set(engine_kwargs=kwargs)
    t0 = time.perf_counter()
    engine = PtEngine(args.model, **kwargs)
    record.set(startup_s=round(time.perf_counter() - t0, 2), effective=_pt_probe(engine))
    print(f"  pt engine ready in {record.data['startup_s']} s: {record.data['effective']}", flush=True)

    def generate(sets: list[list[int]], out_len: int) -> int:
        config = RequestConfig(max_tokens=out_len, temperature=0, ignore_eos=True)
        responses = engine.infer([InferRequest(prompt=p) for p in sets], config, use_tqdm=False)
        return sum(r.usage.completion_tokens for r in responses)

    try:
        _timed_sets(prompts, record, generate)
    finally:
        record.set(memory=memory_info())
        engine.close()


def run_hf(args: argparse.Namespace, prompts: dict[str, Any], record: RunRecord) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype) if args.dtype else torch.float32
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    pad = model.generation_config.pad_token_id
    pad = 0 if pad is None else int(pad)
    record.set(startup_s=round(time.perf_counter() - t0, 2),
               effective={"batch": args.batch, "attn_implementation": "sdpa", "dtype": str(dtype)})

    def generate(sets: list[list[int]], out_len: int) -> int:
        produced = 0
        with torch.inference_mode():
            for i in range(0, len(sets), args.batch):
                chunk = sets[i:i + args.batch]
                width = max(len(p) for p in chunk)
                ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
                mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
                # min_new_tokens = max_new_tokens: EOS is suppressed, every row yields out_len tokens
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=out_len,
                                     min_new_tokens=out_len, do_sample=False, pad_token_id=pad)
                produced += (out.shape[1] - width) * len(chunk)
        return produced

    _timed_sets(prompts, record, generate)
    record.set(memory=memory_info())


def _timed_sets(prompts: dict[str, Any], record: RunRecord, generate: Any) -> None:
    """Warm-up, then every set timed; a failed set is recorded and the next one still runs."""
    warmup = prompts.get("warmup") or []
    if warmup:
        t0 = time.perf_counter()
        generate(warmup, int(prompts.get("warmup_output_len", 8)))
        record.set(warmup_s=round(time.perf_counter() - t0, 2))
    out_len = int(prompts["output_len"])
    for name, sets in prompts["sets"].items():
        try:
            record.data["runs"][name] = timed_run(name, len(sets), len(sets) * out_len,
                                                  lambda: generate(sets, out_len))
        except Exception as exc:  # noqa: BLE001 - recorded; the other sets still run
            record.data["runs"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:1000]}
            record.fail(f"set {name}", exc)
        record.save()


def run(argv: list[str] | None = None) -> int:
    """The whole run; returns the exit status (0: every set produced what it should)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["pt", "hf"], required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--dtype", default=None, help="torch dtype name (bfloat16, float32)")
    parser.add_argument("--engine_kwargs", default=None, help="JSON keyword arguments for PtEngine")
    parser.add_argument("--batch", type=int, default=16, help="hf: static batch size")
    parser.add_argument("--label", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings = WarningLog()
    logging.getLogger().addHandler(warnings)
    record = RunRecord(args.out, args.label or args.engine, **device_info())
    return record.capture(lambda: (run_pt if args.engine == "pt" else run_hf)(args, load_prompts(args.prompts),
                                                                             record), warnings)


def main() -> None:
    exit_with(run)


if __name__ == "__main__":
    main()
