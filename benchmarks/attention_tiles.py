"""Times the paged attention kernel alone for a long-context prefill chunk and a decode batch, at several tile
settings, against torch's SDPA (flash) on the same data laid out contiguously: what tile settings to default to.

    python -m benchmarks.attention_tiles --out tiles.json
"""
from __future__ import annotations

import argparse
import json
import math

import torch


def _case(ctx: int, q_len: int, batch: int, heads: int, kv_heads: int, dim: int, page: int = 16):
    blocks = math.ceil(ctx / page)
    perm = torch.randperm(batch * blocks + 1, device="cuda")[: batch * blocks].int()
    tables = torch.zeros(batch + 1, blocks, dtype=torch.int32, device="cuda")
    tables[1:] = perm.view(batch, blocks)
    slots = (batch * blocks + 1) * page
    kc = torch.randn(slots, kv_heads, dim, device="cuda", dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    q = torch.randn(batch * q_len, heads, dim, device="cuda", dtype=torch.bfloat16)
    rows = torch.arange(1, batch + 1, dtype=torch.int32, device="cuda")
    ctx_lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
    starts = torch.arange(0, batch * q_len + 1, q_len, dtype=torch.int32, device="cuda")
    return q, kc, vc, tables, rows, ctx_lens, starts


def _time(fn, reps: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def _sdpa_backends(heads: int, kv_heads: int, dim: int) -> list[dict]:
    """torch's fused SDPA kernels on a 2,048-token chunk over a 14,336-token prefix, in the two parts a paged prefill
    could hand them (the prefix unmasked, the chunk causal over itself, merged by their log-sum-exps): how fast a
    library kernel would do what the paged kernel does in one pass. Keys and values expanded to every query head
    (what the fused kernels take; the expansion's copy is timed apart)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    prefix, chunk = 14336, 2048
    q = torch.randn(1, heads, chunk, dim, device="cuda", dtype=torch.bfloat16)
    k_pre = torch.randn(1, kv_heads, prefix, dim, device="cuda", dtype=torch.bfloat16)
    k_own = torch.randn(1, kv_heads, chunk, dim, device="cuda", dtype=torch.bfloat16)
    group = heads // kv_heads
    expand = lambda t: t.repeat_interleave(group, dim=1)  # noqa: E731
    kp, ko = expand(k_pre), expand(k_own)
    flops = 4 * heads * dim * (chunk * prefix + chunk * (chunk + 1) / 2)
    out = [{"case": "expand K and V of the prefix", "ms": round(2 * _time(lambda: expand(k_pre)), 3)}]
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for name, backend in backends.items():
        try:
            with sdpa_kernel([backend]):
                ms = _time(lambda: (sdpa(q, kp, kp, is_causal=False), sdpa(q, ko, ko, is_causal=True)))
            out.append({"case": f"{name}: prefix + causal chunk", "ms": round(ms, 3),
                        "tflops": round(flops / ms / 1e9, 1)})
        except Exception as exc:  # noqa: BLE001 - a backend this build or GPU lacks
            out.append({"case": name, "error": f"{type(exc).__name__}: {str(exc)[:160]}"})
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    from swiftops.engines.pt.triton_attention import decode_splits, paged_attention
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--defaults_only", action="store_true", help="time the default tiles only")
    args = parser.parse_args()
    heads, kv_heads, dim = 28, 4, 128  # the 7B shape
    record: dict = {"device": torch.cuda.get_device_name(), "cases": []}
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    # (label, context, new tokens per sequence, sequences, key segments: None = the engine's choice)
    cases = [("prefill 2048 over 16384", 16384, 2048, 1, None), ("prefill 2048 over 2048", 2048, 2048, 1, None),
             ("decode b256 ctx 640", 640, 1, 256, None), ("decode b16 ctx 16640", 16640, 1, 16, None),
             # the decode rows of a long-context mixed step, launched unsplit as mixed steps do
             ("decode b15 ctx 16640 unsplit", 16640, 1, 15, 1)]
    for label, ctx, q_len, batch, forced in cases:
        q, kc, vc, tables, rows, ctx_lens, starts = _case(ctx, q_len, batch, heads, kv_heads, dim)
        splits = forced or (decode_splits(batch * kv_heads, sms) if q_len == 1 else 1)
        flops = 4 * batch * heads * dim * (q_len * ctx - q_len * (q_len - 1) / 2)
        entry = {"case": label, "splits": splits, "variants": {}}
        configs = [None]
        if not args.defaults_only:
            configs += [(64, 4, 3), (64, 8, 3), (64, 4, 2), (32, 4, 3), (128, 4, 2), (128, 8, 2), (64, 2, 3)]
        for tiles in configs:
            try:
                ms = _time(lambda: paged_attention(q, kc, vc, tables, rows, ctx_lens, starts, q_len, 16,
                                                   dim ** -0.5, None, None, splits, tiles))
                entry["variants"][str(tiles)] = {"ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1)}
            except Exception as exc:  # noqa: BLE001 - a tile that does not fit shared memory
                entry["variants"][str(tiles)] = {"error": f"{type(exc).__name__}: {str(exc)[:120]}"}
        # SDPA on contiguous keys: the same attention without paging (a bound on what the kernel could reach)
        k = torch.randn(batch, kv_heads, ctx, dim, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        qq = torch.randn(batch, heads, q_len, dim, device="cuda", dtype=torch.bfloat16)
        mask = None
        if q_len > 1:
            mask = torch.ones(q_len, ctx, dtype=torch.bool, device="cuda").tril(ctx - q_len)
        ms = _time(lambda: torch.nn.functional.scaled_dot_product_attention(qq, k, v, attn_mask=mask,
                                                                            enable_gqa=True))
        entry["sdpa_ms"] = round(ms, 3)
        entry["sdpa_tflops"] = round(flops / ms / 1e9, 1)
        record["cases"].append(entry)
        print(json.dumps(entry), flush=True)
    record["sdpa_backends"] = _sdpa_backends(heads, kv_heads, dim)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
