"""The Triton paged-attention kernels against a plain reference, on CPU through Triton's interpreter
(`TRITON_INTERPRET=1`, set by tests/conftest.py without a GPU) and compiled on the GPU machine."""
from __future__ import annotations

import math
import random

import pytest
import torch

pytest.importorskip("triton", reason="triton is in the test extra")

from swiftops.engines.pt.triton_attention import (  # noqa: E402
    decode_splits,
    paged_attention,
    tile_map,
    tile_rows,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _reference(q, k_cache, v_cache, tables, rows, ctx_lens, q_lens, block_size, scale, window, softcap):
    """Per sequence, in float64: gather its context through the table and attend causally."""
    outs = []
    start = 0
    group = q.shape[1] // k_cache.shape[1]
    for row, ctx, n in zip(rows.tolist(), ctx_lens.tolist(), q_lens):
        pos = torch.arange(ctx)
        slots = tables[row, pos // block_size].long().cpu() * block_size + pos % block_size
        k = k_cache.cpu()[slots].double().repeat_interleave(group, dim=1)  # [ctx, H, D]
        v = v_cache.cpu()[slots].double().repeat_interleave(group, dim=1)
        qs = q[start:start + n].cpu().double()  # [n, H, D]
        s = torch.einsum("thd,khd->htk", qs, k) * scale
        if softcap:
            s = softcap * torch.tanh(s / softcap)
        q_pos = torch.arange(ctx - n, ctx)
        mask = pos[None, :] <= q_pos[:, None]
        if window:
            mask &= pos[None, :] > q_pos[:, None] - window
        s = s.masked_fill(~mask, float("-inf"))
        outs.append(torch.einsum("htk,khd->thd", torch.softmax(s, dim=-1), v))
        start += n
    return torch.cat(outs)


def _case(q_lens, ctx_lens, heads=4, kv_heads=2, head_dim=16, block_size=4, dtype=torch.float32, seed=0):
    """Random caches and shuffled block tables (pages scattered over the cache, rows in any order)."""
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [math.ceil(c / block_size) for c in ctx_lens]
    num_blocks = sum(blocks_per_seq) + 3
    k_cache = torch.randn(num_blocks * block_size, kv_heads, head_dim, generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks * block_size, kv_heads, head_dim, generator=gen).to(dtype)
    pages = list(range(1, num_blocks))
    random.Random(seed).shuffle(pages)
    width = max(blocks_per_seq) + 2
    tables = torch.zeros(len(ctx_lens) + 2, width, dtype=torch.int32)
    rows = list(range(1, len(ctx_lens) + 1))
    random.Random(seed + 1).shuffle(rows)
    for row, n in zip(rows, blocks_per_seq):
        tables[row, :n] = torch.tensor([pages.pop() for _ in range(n)], dtype=torch.int32)
    q = torch.randn(sum(q_lens), heads, head_dim, generator=gen).to(dtype)
    q_starts = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    return (q.to(DEVICE), k_cache.to(DEVICE), v_cache.to(DEVICE), tables.to(DEVICE),
            torch.tensor(rows, dtype=torch.int32, device=DEVICE), torch.tensor(ctx_lens, dtype=torch.int32,
                                                                               device=DEVICE),
            q_starts.to(DEVICE))


def _check(q_lens, ctx_lens, window=None, softcap=None, num_splits=1, tol=2e-5, decode_tail=0, **shape):
    q, kc, vc, tables, rows, ctx, starts = _case(q_lens, ctx_lens, **shape)
    block_size = shape.get("block_size", 4)
    scale = q.shape[-1] ** -0.5
    got = paged_attention(q, kc, vc, tables, rows, ctx, starts, max(q_lens), block_size, scale, window, softcap,
                          num_splits, decode_tail=decode_tail)
    want = _reference(q, kc, vc, tables, rows, ctx, q_lens, block_size, scale, window, softcap)
    assert got.shape == q.shape
    err = (got.cpu().double() - want).abs().max().item()
    assert err < tol, err


def test_decode_mixed_context_lengths_gqa():
    _check(q_lens=[1, 1, 1], ctx_lens=[1, 70, 9])


def test_decode_split_kv_equals_reference():
    for splits in (2, 4, 16):  # more segments than key tiles leaves some empty: they must weigh nothing
        _check(q_lens=[1, 1], ctx_lens=[130, 5], num_splits=splits)


def test_prefill_fresh_and_over_a_cached_prefix():
    # a whole prompt (ctx == q_len), a chunk after 37 cached tokens, and one token (a decode row in the same step)
    _check(q_lens=[23, 11, 1], ctx_lens=[23, 48, 17])


def test_prefill_group_of_seven_and_odd_head_dim():
    # Qwen2.5's GQA group (7 query heads per KV head) and a head size that is not a power of two
    _check(q_lens=[20, 3], ctx_lens=[20, 40], heads=7, kv_heads=1, head_dim=24)


def test_chunk_over_a_long_prefix_takes_the_unmasked_tiles():
    # several query tiles (GQA 7: 18 tokens a tile) after a prefix of whole key tiles, which skip the mask; with a
    # power-of-two head size (no column mask) and an odd one
    _check(q_lens=[40, 1], ctx_lens=[190, 131], heads=7, kv_heads=1, head_dim=32, block_size=16)
    _check(q_lens=[40, 1], ctx_lens=[190, 131], heads=7, kv_heads=1, head_dim=24, block_size=16)
    _check(q_lens=[1, 1], ctx_lens=[190, 131], heads=7, kv_heads=1, head_dim=32, block_size=16, num_splits=4)


def test_decode_rows_of_a_prefill_step_in_their_own_launch():
    # a prefill step's decode rows (the last sequences, one token each) run with the decode tile: the same result;
    # the prefill sequences before them keep theirs (GQA 7, chunks over cached prefixes, a window, a soft cap)
    _check(q_lens=[40, 23, 1, 1, 1], ctx_lens=[190, 23, 131, 7, 64], heads=7, kv_heads=1, head_dim=32,
           block_size=16, decode_tail=3)
    _check(q_lens=[12, 1, 1], ctx_lens=[30, 45, 9], window=8, decode_tail=2)
    _check(q_lens=[12, 1], ctx_lens=[12, 33], softcap=5.0, decode_tail=1)
    # a one-token prefill chunk before the tail stays with the prefill launch
    _check(q_lens=[5, 1, 1], ctx_lens=[9, 20, 3], decode_tail=1)


def _check_mapped(q_lens, ctx_lens, decode_tail, padded_seqs=0, spare=3, window=None, softcap=None, **shape):
    """A mixed step through fixed-size tile maps (as a CUDA graph replays it): the same result as the reference.
    `padded_seqs` sequences with no new tokens follow the real ones (a graph's batch bucket), and each map has
    `spare` padding columns past the step's tiles."""
    q, kc, vc, tables, rows, ctx, starts = _case(q_lens, ctx_lens, **shape)
    if padded_seqs:  # the scratch row 0, no tokens: its q_starts entries repeat the last offset
        rows = torch.cat([rows, torch.zeros(padded_seqs, dtype=torch.int32, device=DEVICE)])
        ctx = torch.cat([ctx, torch.zeros(padded_seqs, dtype=torch.int32, device=DEVICE)])
        starts = torch.cat([starts, starts[-1:].repeat(padded_seqs)])
    group, head_dim = q.shape[1] // kc.shape[1], q.shape[2]
    head = len(q_lens) - decode_tail
    _, prefill_q = tile_rows(2, group, head_dim)
    _, decode_q = tile_rows(1, group, head_dim)
    width = sum(-(-n // prefill_q) for n in q_lens[:head]) + spare
    maps = (torch.tensor(tile_map(q_lens[:head], prefill_q, width), dtype=torch.int32, device=DEVICE),
            torch.tensor(tile_map(q_lens[head:], decode_q, decode_tail + spare, first=head), dtype=torch.int32,
                         device=DEVICE))
    block_size = shape.get("block_size", 4)
    scale = q.shape[-1] ** -0.5
    got = paged_attention(q, kc, vc, tables, rows, ctx, starts, 0, block_size, scale, window, softcap,
                          tile_maps=maps)
    want = _reference(q, kc, vc, tables, rows[: len(q_lens)], ctx[: len(q_lens)], q_lens, block_size, scale,
                      window, softcap)
    err = (got.cpu().double() - want).abs().max().item()
    assert err < 2e-5, err


def test_fixed_grid_tile_maps_equal_the_reference():
    # prefill chunks over cached prefixes and decode rows, GQA 7 with an odd head size, a batch padded with empty
    # sequences and maps padded past the step's tiles (what a CUDA graph of a mixed step replays)
    _check_mapped([40, 23, 1, 1, 1], [190, 23, 131, 7, 64], decode_tail=3, padded_seqs=2, heads=7, kv_heads=1,
                  head_dim=24, block_size=16)
    _check_mapped([12, 1, 1], [30, 45, 9], decode_tail=2, window=8)
    _check_mapped([12, 5], [12, 33], decode_tail=0, softcap=5.0, padded_seqs=1)


def test_decode_rows_of_a_prefill_step_split_by_context(monkeypatch):
    # Decode rows riding in a prefill step take one key segment per ROW_SPLIT_KEYS keys (8 here; 2,048 in the
    # engine), up to 8: rows of one segment (a 5-key context), of several, of the most (131 keys: 17 tiles of 8 in 8
    # segments, some empty), with a window and a soft cap; eager and through the fixed-grid maps with padding.
    from swiftops.engines.pt import triton_attention

    monkeypatch.setattr(triton_attention, "ROW_SPLIT_KEYS", 8)
    shape = dict(heads=7, kv_heads=1, head_dim=24, block_size=16)
    _check(q_lens=[40, 1, 1, 1], ctx_lens=[190, 131, 5, 20], decode_tail=3, **shape)
    _check(q_lens=[12, 1, 1], ctx_lens=[30, 45, 9], window=8, decode_tail=2)
    _check(q_lens=[12, 1], ctx_lens=[12, 33], softcap=5.0, decode_tail=1)
    _check_mapped([40, 23, 1, 1, 1], [190, 23, 131, 5, 64], decode_tail=3, padded_seqs=2, **shape)
    _check_mapped([12, 1, 1], [30, 45, 9], decode_tail=2, window=8)


def test_tile_map_lists_each_sequences_tiles_then_padding():
    assert tile_map([5, 1, 3], 2, 7, first=4) == [[4, 4, 4, 5, 6, 6, -1], [0, 1, 2, 0, 0, 1, 0]]
    assert tile_map([], 2, 2) == [[-1, -1], [0, 0]]
    with pytest.raises(ValueError, match="do not fit"):
        tile_map([9], 2, 4)


def test_sliding_window_and_softcap():
    _check(q_lens=[30, 1], ctx_lens=[45, 60], window=8)
    _check(q_lens=[12, 1], ctx_lens=[12, 33], softcap=5.0)


def test_block_size_larger_than_key_tile_and_half_precision():
    # Triton's interpreter has no bfloat16 arithmetic (numpy has none): float16 stands in for it on CPU
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float16
    _check(q_lens=[5, 1], ctx_lens=[200, 150], block_size=128, dtype=dtype, tol=2e-2)


def test_decode_splits_policy():
    assert decode_splits(1024, 132) == 1
    assert decode_splits(64, 132) == 8
    assert decode_splits(2, 132) == 16


@pytest.mark.gpu
def test_steps_of_other_sizes_compile_no_new_variant():
    # Triton compiles a variant per pointer alignment and per integer's divisibility by 16 unless told not to: a
    # mixed step of each new token count or decode-row split would stop serving for a compile (seen: 190 ms mixed
    # steps in a shared-prefix run on an H100). After one step of each kind, other sizes compile nothing.
    from swiftops.engines.pt.triton_attention import _paged_attention_kernel

    def variants() -> set:
        return {key for caches in _paged_attention_kernel.device_caches.values() for key in caches[0]}

    shape = dict(heads=14, kv_heads=2, head_dim=64, block_size=16, dtype=torch.bfloat16, tol=2e-2)
    _check(q_lens=[48, 1, 1, 1, 1], ctx_lens=[300, 90, 91, 92, 93], decode_tail=4, **shape)
    _check(q_lens=[40, 33], ctx_lens=[240, 33], **shape)
    before = variants()
    assert before
    # token counts of every residue mod 16, decode rows starting at every offset mod 4
    for extra in range(1, 9):
        prefills = 1 + extra % 4
        q_lens = [16 + extra + i for i in range(prefills)] + [1] * extra
        ctx_lens = [200 + extra + i for i in range(prefills)] + [70 + i for i in range(extra)]
        _check(q_lens=q_lens, ctx_lens=ctx_lens, decode_tail=extra, **shape)
        _check(q_lens=q_lens[:prefills], ctx_lens=ctx_lens[:prefills], **shape)
    assert not variants() - before, f"compiled for the new sizes: {variants() - before}"
