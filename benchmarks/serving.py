"""Serving benchmark in the manner of `vllm bench serve`: streaming clients against a running
`swiftops deploy`, swept over concurrency, plus the offline engine on the same workload for the ratio.

    python benchmarks/serving.py --workload gpu     # Qwen2.5-0.5B-shaped random bf16 model, 128 -> 256 tokens
    python benchmarks/serving.py --workload cpu     # the tiny model, 32 -> 64 tokens
    python benchmarks/serving.py --url http://host:8000 --model NAME --vocab V   # an existing server

Each client sends /v1/completions requests (token-id prompts, EOS ignored, fixed output length) one after
another until the shared queue is empty. Reported per concurrency: output tokens/s, TTFT, inter-token
latency and end-to-end latency (p50 / p99).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(round((len(values) - 1) * q / 100)))]


async def _one(client: httpx.AsyncClient, url: str, model: str, prompt: list[int], out_len: int,
               record: dict[str, list[float]]) -> int:
    body = {"model": model, "prompt": prompt, "max_tokens": out_len, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    last = None
    tokens = 0
    buffer = ""
    async with client.stream("POST", url + "/v1/completions", json=body) as resp:
        resp.raise_for_status()
        # Split events on the blank line only (SSE framing); str.splitlines would also split inside the
        # JSON on U+2028 and friends, which the model's text may hold.
        async for text in resp.aiter_text():
            buffer += text
            *events, buffer = buffer.split("\n\n")
            for event in events:
                if not event.startswith("data: ") or event == "data: [DONE]":
                    continue
                chunk = json.loads(event[6:])
                now = time.perf_counter()
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    if last is None:
                        record["ttft"].append(now - start)
                    else:
                        record["itl"].append(now - last)
                    last = now
    record["e2e"].append(time.perf_counter() - start)
    return tokens


async def sweep_point(url: str, model: str, prompts: list[list[int]], out_len: int, concurrency: int) -> dict:
    queue: asyncio.Queue[list[int]] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    record: dict[str, list[float]] = {"ttft": [], "itl": [], "e2e": []}
    produced = 0
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def worker() -> None:
            nonlocal produced
            while not queue.empty():
                tokens = await _one(client, url, model, queue.get_nowait(), out_len, record)
                produced += tokens  # after the await: `x += await f()` would read x before awaiting
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    out = {"concurrency": concurrency, "requests": len(prompts), "output_tok_s": produced / seconds}
    for name, values in record.items():
        out[f"{name}_p50_ms"] = _pct(values, 50) * 1000
        out[f"{name}_p99_ms"] = _pct(values, 99) * 1000
    return out


def offline(model_dir: str, prompts: list[list[int]], out_len: int, batch: int) -> float:
    """The offline engine's tok/s on the same prompts: the ceiling the served figures are compared with."""
    from swiftops import InferRequest, PtEngine, RequestConfig
    engine = PtEngine(model_dir, max_batch_size=batch, max_model_len=len(prompts[0]) + out_len)
    try:
        config = RequestConfig(max_tokens=out_len, temperature=0, ignore_eos=True)
        engine.infer([InferRequest(prompt=prompts[0])], config.model_copy(update={"max_tokens": 4}), use_tqdm=False)
        t0 = time.perf_counter()
        responses = engine.infer([InferRequest(prompt=p) for p in prompts], config, use_tqdm=False)
        seconds = time.perf_counter() - t0
        produced = sum(r.usage.completion_tokens for r in responses)
        assert produced == len(prompts) * out_len, produced
        return produced / seconds
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=["gpu", "cpu"], default="cpu")
    parser.add_argument("--url", default=None, help="an existing server (skips start-up and the offline ratio)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--vocab", type=int, default=None)
    parser.add_argument("--concurrency", default="1,8,32,128")
    parser.add_argument("--out", default=None)
    parser.add_argument("--server_log", default=None, help="write the started server's whole log here")
    args = parser.parse_args()
    from benchmarks.throughput import random_prompts as _prompts

    gpu = args.workload == "gpu"
    p_len, out_len = (128, 256) if gpu else (32, 64)
    levels = [int(c) for c in args.concurrency.split(",")]
    record: dict[str, Any] = {"workload": args.workload, "command": " ".join(sys.argv), "points": []}
    server = None
    model_dir: Optional[str] = None
    if args.url:
        url, model, vocab = args.url, args.model, args.vocab
    else:
        from swiftops.server.launcher import ServerProcess
        if gpu:
            from benchmarks.bench_model import build_qwen25_05b_shaped
            model_dir = str(build_qwen25_05b_shaped(tempfile.mkdtemp(prefix="bench-"), dtype="bfloat16"))
            vocab = 151936
        else:
            from swiftops.models.tiny import build_tiny_model
            model_dir = str(build_tiny_model(tempfile.mkdtemp(prefix="bench-tiny-"), arch="qwen2"))
            vocab = 1300
        batch = max(levels)
        server = ServerProcess(["--model", model_dir, "--max_batch_size", str(batch), "--max_concurrency",
                                str(batch), "--max_queue", "1024", "--max_model_len", str(p_len + out_len)],
                               ready_timeout=600).start()
        url, model = server.url, Path(model_dir).name
    try:
        for c in levels:
            prompts = _prompts(max(2 * c, 16), p_len, vocab, seed=c)
            point = asyncio.run(sweep_point(url, model, prompts, out_len, c))
            record["points"].append(point)
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in point.items()}), flush=True)
    except Exception:
        if server is not None:
            print("--- server log (tail) ---\n" + server.output()[-4000:], file=sys.stderr)
        raise
    finally:
        if server is not None:
            server.stop()
            if args.server_log:
                Path(args.server_log).write_text(server.output())
    if model_dir is not None and 32 in levels:
        prompts = _prompts(64, p_len, vocab, seed=32)
        record["offline_b32_tok_s"] = offline(model_dir, prompts, out_len, 32)
        served = next(p for p in record["points"] if p["concurrency"] == 32)["output_tok_s"]
        record["served_over_offline_c32"] = served / record["offline_b32_tok_s"]
    import torch
    import transformers
    record.update(device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
                  torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version())
    print(json.dumps(record, indent=2, default=str))
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2, default=str))


if __name__ == "__main__":
    main()
