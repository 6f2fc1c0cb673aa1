"""The CPU decode forward without transformers' glue (swiftops.engines.pt.cpu_decode) on and off, in one process.

One PtEngine at max_batch_size 16 runs criterion (f)'s workload (64 requests of 20 random prompt tokens x 64,
greedy, EOS ignored) again and again, its runner's lean decoder switched on and off between runs, in alternating
order; the shared development machine's load moves from minute to minute, so the pairs are what compares.

    python -m benchmarks.lean_decode_ab --shape 30m --pairs 8 --out lean-ab-30m.json
    python -m benchmarks.lean_decode_ab --shape thin --pairs 6     # the same 8 layers 64 wide: per-step overhead
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from benchmarks import bench_model

# criterion (f)'s 8-layer shape with GEMMs that cost next to nothing: what is left is the per-step host work
bench_model.SHAPES["thin"] = dict(bench_model.QWEN2_30M, hidden_size=64, intermediate_size=128, vocab_size=512)


def main() -> None:
    from swiftops import InferRequest, PtEngine, RequestConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="30m", choices=["30m", "thin"])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    path = bench_model.build_model(tempfile.mkdtemp(prefix="lean-ab-"), args.shape, dtype="float32", device="cpu")
    engine = PtEngine(str(path), torch_dtype="float32", max_batch_size=16)
    runner = engine._core.runner
    lean = runner.lean
    assert lean is not None, f"the lean decoder is not in use: {engine.fused_kernels}"
    prompts = torch.randint(10, 500, (64, 20), generator=torch.Generator().manual_seed(0)).tolist()
    config = RequestConfig(max_tokens=64, temperature=0, ignore_eos=True)

    def tok_s() -> float:
        start = time.perf_counter()
        engine.infer([InferRequest(prompt=p) for p in prompts], config, use_tqdm=False)
        return round(64 * 64 / (time.perf_counter() - start), 1)

    tok_s()  # warm-up
    runs: dict[str, list[float]] = {"lean": [], "model_forward": []}
    for i in range(args.pairs):
        for mode in ("lean", "model_forward") if i % 2 == 0 else ("model_forward", "lean"):
            runner.lean = lean if mode == "lean" else None
            runs[mode].append(tok_s())
    engine.close()
    ratios = [a / b for a, b in zip(runs["lean"], runs["model_forward"], strict=True)]
    record = {"shape": args.shape, "torch": torch.__version__, "threads": torch.get_num_threads(), **runs,
              "median_lean": statistics.median(runs["lean"]),
              "median_model_forward": statistics.median(runs["model_forward"]),
              "median_pair_ratio": round(statistics.median(ratios), 3)}
    print(json.dumps(record))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
