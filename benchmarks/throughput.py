"""Offline throughput: swiftops' pt engine against transformers' `generate` (static batches) and
`generate_batch` (continuous batching), same model, prompts and fixed output lengths (EOS ignored), one run.

    python benchmarks/throughput.py --workload gpu   # (a) 256 x 128 -> 256 and (b) batch 1, Qwen2.5-0.5B shape, bf16
    python benchmarks/throughput.py --workload cpu   # (c) tiny model, 64 x 32 -> 64

Prints a table and writes JSON (--out) with device, versions, tokens/s, ratios and peak memory.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from typing import Any, Callable

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any]) -> float:
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t0


def _prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab - 10, (n, length), generator=g).tolist()


def hf_static(model: Any, prompts: list[list[int]], out_len: int, batch: int) -> float:
    device = next(model.parameters()).device

    def run() -> None:
        for i in range(0, len(prompts), batch):
            ids = torch.tensor(prompts[i:i + batch], device=device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=out_len,
                                 min_new_tokens=out_len, do_sample=False, eos_token_id=None, pad_token_id=0)
            assert out.shape[1] == ids.shape[1] + out_len
    run_small = lambda: model.generate(input_ids=torch.tensor(prompts[:1], device=device),  # noqa: E731
                                       max_new_tokens=4, do_sample=False, pad_token_id=0)
    run_small()  # warm-up
    return len(prompts) * out_len / _timed(run)


def hf_continuous(model: Any, prompts: list[list[int]], out_len: int) -> float:
    from transformers import GenerationConfig
    cfg = GenerationConfig(max_new_tokens=out_len, min_new_tokens=out_len, do_sample=False, eos_token_id=-1,
                           pad_token_id=0)
    model.generate_batch(inputs=prompts[:2], generation_config=cfg)  # warm-up
    results: dict = {}
    seconds = _timed(lambda: results.update(model.generate_batch(inputs=prompts, generation_config=cfg)))
    produced = sum(len(r.generated_tokens) for r in results.values())
    return produced / seconds


def ours(engine: Any, prompts: list[list[int]], out_len: int) -> float:
    from swiftops import InferRequest, RequestConfig
    cfg = RequestConfig(max_tokens=out_len, temperature=0, ignore_eos=True)
    engine.infer([InferRequest(prompt=prompts[0])], cfg.model_copy(update={"max_tokens": 4}), use_tqdm=False)
    responses: list = []
    seconds = _timed(lambda: responses.extend(
        engine.infer([InferRequest(prompt=p) for p in prompts], cfg, use_tqdm=False)))
    produced = sum(r.usage.completion_tokens for r in responses)
    assert produced == len(prompts) * out_len, produced
    return produced / seconds


def _peak_gb() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def run_gpu(args: argparse.Namespace) -> dict:
    from transformers import AutoModelForCausalLM

    from benchmarks.bench_model import build_qwen25_05b_shaped
    from swiftops import PtEngine

    path = build_qwen25_05b_shaped(tempfile.mkdtemp(prefix="bench-"), dtype="bfloat16")
    n, p_len, o_len = args.requests, 128, 256
    prompts = _prompts(n, p_len, 151936)
    figures: dict[str, Any] = {}
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    with torch.inference_mode():
        for batch in (64, 256):
            figures[f"hf_generate_b{batch}"] = hf_static(hf, prompts, o_len, batch)
            print(f"hf generate batch {batch}: {figures[f'hf_generate_b{batch}']:.0f} tok/s", flush=True)
        figures["hf_generate_b1"] = hf_static(hf, prompts[:1], o_len, 1)
        print(f"hf generate batch 1: {figures['hf_generate_b1']:.0f} tok/s", flush=True)
    for impl in ("paged|sdpa", "paged|eager"):  # transformers' names differ across 5.x releases
        try:
            hf.set_attn_implementation(impl)
            figures["hf_generate_batch"] = hf_continuous(hf, prompts, o_len)
            figures["hf_generate_batch_attn"] = impl
            break
        except Exception as exc:  # noqa: BLE001 - recorded, not fatal: the baseline is informational
            figures["hf_generate_batch_error"] = f"{impl}: {type(exc).__name__}: {exc}"[:300]
    print(f"hf generate_batch: {figures.get('hf_generate_batch', figures.get('hf_generate_batch_error'))}", flush=True)
    del hf
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    engine = PtEngine(str(path), max_batch_size=args.max_batch_size, max_model_len=p_len + o_len,
                      enforce_eager=args.enforce_eager)
    figures["ours_startup_s"] = time.perf_counter() - t0
    figures["ours_runner"] = engine.runner_name
    figures["ours"] = ours(engine, prompts, o_len)
    figures["ours_b1"] = ours(engine, prompts[:1], o_len)
    figures["ours_peak_gb"] = _peak_gb()
    figures["gpu_total_gb"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    engine.close()
    best_static = max(figures["hf_generate_b64"], figures["hf_generate_b256"])
    figures["ratio_vs_best_static"] = figures["ours"] / best_static
    figures["ratio_b1"] = figures["ours_b1"] / figures["hf_generate_b1"]
    if "hf_generate_batch" in figures:
        figures["ratio_vs_generate_batch"] = figures["ours"] / figures["hf_generate_batch"]
    return figures


def run_cpu(args: argparse.Namespace) -> dict:
    from transformers import AutoModelForCausalLM

    from swiftops import PtEngine
    from swiftops.models.tiny import build_tiny_model

    path = build_tiny_model(tempfile.mkdtemp(prefix="bench-tiny-"), arch="qwen2", seed=0)
    n, p_len, o_len = 64, 32, 64
    vocab = AutoModelForCausalLM.from_pretrained(path).config.vocab_size
    prompts = _prompts(n, p_len, vocab)
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
    figures: dict[str, Any] = {}
    with torch.inference_mode():
        figures["hf_generate_b64"] = hf_static(hf, prompts, o_len, 64)
    engine = PtEngine(str(path), max_batch_size=64)
    figures["ours_runner"] = engine.runner_name
    figures["ours"] = ours(engine, prompts, o_len)
    engine.close()
    figures["ratio_vs_static_b64"] = figures["ours"] / figures["hf_generate_b64"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=["gpu", "cpu"], required=True)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--max_batch_size", type=int, default=256)
    parser.add_argument("--enforce_eager", action="store_true")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    import transformers
    figures = run_gpu(args) if args.workload == "gpu" else run_cpu(args)
    record = {
        "workload": args.workload, "command": " ".join(sys.argv),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "figures": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in figures.items()},
    }
    print(json.dumps(record, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
