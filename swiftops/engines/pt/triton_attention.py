"""Paged attention in Triton: every sequence of a step in one launch, reading only its real context.

One program computes a tile of one sequence's new tokens for one KV head. The query heads that share that KV head
(GQA) are packed into the tile's rows (row m = token m // GROUP, head m % GROUP), so each key and value tile is loaded
once for the whole group. The program walks the sequence's keys in tiles of BLOCK_N through its block table (any
block size: each key's page is looked up on its own), with an online softmax, the causal mask and an optional sliding
window and logit soft-capping applied in the kernel. Decode is the same kernel with one new token per sequence.

When a decode batch has too few (sequence, KV head) programs to fill the GPU (a few long sequences), each sequence's
keys are cut into NUM_SPLITS segments computed in parallel, and a second kernel merges their partial softmaxes
(split-KV, "flash decoding"). The segment length is derived from each sequence's context inside the kernel, so a
CUDA graph captured once serves every context length.

Nothing here is sized by max_model_len: block tables are read only up to each sequence's context.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _attend_tile(
    q,
    m_i,
    l_i,
    acc,
    tile,
    kv_begin,
    kv_end,
    q_pos,
    table,
    k_ptr,
    v_ptr,
    kv_head,
    stride_ks,
    stride_kh,
    stride_vs,
    stride_vh,
    offs_d,
    d_valid,
    scale,
    softcap,
    BLOCK_N: tl.constexpr,
    PAGE: tl.constexpr,
    WINDOW: tl.constexpr,
    SOFTCAP: tl.constexpr,
    PRECISION: tl.constexpr,
    MASKED: tl.constexpr,
    EVEN_D: tl.constexpr,
):
    """One tile of keys and values into the online softmax of the program's rows."""
    offs_n = tl.arange(0, BLOCK_N)
    k_pos = kv_begin + tile * BLOCK_N + offs_n
    if MASKED:
        n_valid = k_pos < kv_end
        page = tl.load(table + k_pos // PAGE, mask=n_valid, other=0).to(tl.int64)
    else:
        page = tl.load(table + k_pos // PAGE).to(tl.int64)
    slot = page * PAGE + k_pos % PAGE
    if MASKED:
        k = tl.load(
            k_ptr + slot[None, :] * stride_ks + kv_head * stride_kh + offs_d[:, None],
            mask=n_valid[None, :] & d_valid[:, None],
            other=0.0,
        )
    elif EVEN_D:
        k = tl.load(k_ptr + slot[None, :] * stride_ks + kv_head * stride_kh + offs_d[:, None])
    else:
        k = tl.load(
            k_ptr + slot[None, :] * stride_ks + kv_head * stride_kh + offs_d[:, None], mask=d_valid[:, None], other=0.0
        )
    s = tl.dot(q, k, input_precision=PRECISION)
    if SOFTCAP:  # softcap * tanh(s / softcap), with tanh(x) = 2 sigmoid(2x) - 1
        s = s * scale
        s = softcap * (2.0 * tl.sigmoid(2.0 * s / softcap) - 1.0)
        s = s * 1.4426950408889634  # log2(e): the softmax runs on exp2
    else:
        s = s * (scale * 1.4426950408889634)
    if MASKED:
        visible = n_valid[None, :] & (k_pos[None, :] <= q_pos[:, None])
        if WINDOW > 0:
            visible = visible & (k_pos[None, :] > q_pos[:, None] - WINDOW)
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that see nothing yet: exp2(-inf) = 0
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    if MASKED:
        v = tl.load(
            v_ptr + slot[:, None] * stride_vs + kv_head * stride_vh + offs_d[None, :],
            mask=n_valid[:, None] & d_valid[None, :],
            other=0.0,
        )
    elif EVEN_D:
        v = tl.load(v_ptr + slot[:, None] * stride_vs + kv_head * stride_vh + offs_d[None, :])
    else:
        v = tl.load(
            v_ptr + slot[:, None] * stride_vs + kv_head * stride_vh + offs_d[None, :], mask=d_valid[None, :], other=0.0
        )
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


# Arguments that change from step to step are kept out of Triton's specialisation (it compiles a variant per
# pointer alignment and per integer's divisibility by 16): each new variant is a compile of about a second in the
# middle of serving. On an H100, a shared-prefix run's mixed steps took 190 ms (0.5B) and 264 ms (7B) against 21 and
# 58 without the prefix cache, and 57-61 ms (7B) offline once the variants were compiled (benchmarks/RESULTS.md).
# (The block table's row stride is fixed in an engine; the tests' tables are as wide as their longest context.)
@triton.jit(do_not_specialize=["seq_base", "stride_qh", "stride_table", "stride_ps", "stride_map"])
def _paged_attention_kernel(
    out_ptr,
    q_ptr,
    k_ptr,
    v_ptr,
    tables_ptr,
    rows_ptr,
    ctx_lens_ptr,
    q_starts_ptr,
    part_out_ptr,
    part_max_ptr,
    part_sum_ptr,
    tile_map_ptr,
    seq_base,
    scale,
    softcap,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_ks,
    stride_kh,
    stride_vs,
    stride_vh,
    stride_table,
    stride_ps,
    stride_pt,
    stride_ph,
    stride_map,
    GROUP: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PAGE: tl.constexpr,
    WINDOW: tl.constexpr,
    SOFTCAP: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    PRECISION: tl.constexpr,
    MAPPED: tl.constexpr,
    SPLIT_KEYS: tl.constexpr,
):
    if MAPPED:  # a fixed grid (CUDA-graph replay): program i takes the (sequence, query tile) of the map's column i
        seq = tl.load(tile_map_ptr + tl.program_id(0))
        q_block = tl.load(tile_map_ptr + stride_map + tl.program_id(0))
        if seq < 0:  # the map's padding past this step's tiles
            return
    else:
        q_block = tl.program_id(0)
        seq = seq_base + tl.program_id(1)  # the launch covers sequences seq_base, seq_base + 1, ...
    kv_head = tl.program_id(2) // NUM_SPLITS
    split = tl.program_id(2) % NUM_SPLITS
    q_start = tl.load(q_starts_ptr + seq)
    q_len = tl.load(q_starts_ptr + seq + 1) - q_start
    if q_block * BLOCK_Q >= q_len:
        return
    ctx_len = tl.load(ctx_lens_ptr + seq)
    row = tl.load(rows_ptr + seq).to(tl.int64)
    splits = NUM_SPLITS
    if SPLIT_KEYS > 0:  # segments by context: one per SPLIT_KEYS keys, at most NUM_SPLITS (decode rows only)
        splits = tl.minimum(tl.cdiv(ctx_len, SPLIT_KEYS), NUM_SPLITS)
        if split >= splits:
            return

    offs_m = tl.arange(0, BLOCK_M)
    token = q_block * BLOCK_Q + offs_m // GROUP  # index among this step's new tokens of the sequence
    head = kv_head * GROUP + offs_m % GROUP
    m_valid = (offs_m < BLOCK_Q * GROUP) & (token < q_len)
    q_pos = ctx_len - q_len + token  # absolute position of each row's token
    offs_d = tl.arange(0, BLOCK_D)
    d_valid = offs_d < HEAD_DIM
    q_rows = (q_start + token).to(tl.int64)
    q = tl.load(
        q_ptr + q_rows[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
        mask=m_valid[:, None] & d_valid[None, :],
        other=0.0,
    )

    # Keys this tile can see: causal up to its last token; from the window's start when there is one.
    last_token = tl.minimum(q_block * BLOCK_Q + BLOCK_Q, q_len) - 1
    kv_end = ctx_len - q_len + last_token + 1
    kv_begin = 0
    if WINDOW > 0:
        first_pos = ctx_len - q_len + q_block * BLOCK_Q
        kv_begin = tl.maximum(first_pos - WINDOW + 1, 0)
        kv_begin = (kv_begin // BLOCK_N) * BLOCK_N
    num_tiles = tl.cdiv(kv_end - kv_begin, BLOCK_N)
    tiles_per_split = tl.cdiv(num_tiles, splits)
    tile_lo = split * tiles_per_split
    tile_hi = tl.minimum(tile_lo + tiles_per_split, num_tiles)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    table = tables_ptr + row * stride_table
    # Tiles that every row of this program sees whole (before its first token, no window) skip the mask; only the
    # diagonal tiles (and a window's edge) pay for it.
    full_tiles = 0
    if WINDOW == 0:
        first_pos = ctx_len - q_len + q_block * BLOCK_Q
        full_tiles = tl.minimum((first_pos + 1) // BLOCK_N, num_tiles)
    for tile in range(tile_lo, tl.minimum(tile_hi, full_tiles)):
        m_i, l_i, acc = _attend_tile(
            q,
            m_i,
            l_i,
            acc,
            tile,
            kv_begin,
            kv_end,
            q_pos,
            table,
            k_ptr,
            v_ptr,
            kv_head,
            stride_ks,
            stride_kh,
            stride_vs,
            stride_vh,
            offs_d,
            d_valid,
            scale,
            softcap,
            BLOCK_N,
            PAGE,
            WINDOW,
            SOFTCAP,
            PRECISION,
            False,
            BLOCK_D == HEAD_DIM,
        )
    for tile in range(tl.maximum(tile_lo, full_tiles), tile_hi):
        m_i, l_i, acc = _attend_tile(
            q,
            m_i,
            l_i,
            acc,
            tile,
            kv_begin,
            kv_end,
            q_pos,
            table,
            k_ptr,
            v_ptr,
            kv_head,
            stride_ks,
            stride_kh,
            stride_vs,
            stride_vh,
            offs_d,
            d_valid,
            scale,
            softcap,
            BLOCK_N,
            PAGE,
            WINDOW,
            SOFTCAP,
            PRECISION,
            True,
            BLOCK_D == HEAD_DIM,
        )

    store_mask = m_valid[:, None] & d_valid[None, :]
    if NUM_SPLITS == 1:
        _store_out(out_ptr, acc, l_i, q_rows, head, offs_d, stride_ot, stride_oh, store_mask)
    elif SPLIT_KEYS > 0:  # partials by program row (the map's column, or the sequence in the launch), not by token
        if splits == 1:
            _store_out(out_ptr, acc, l_i, q_rows, head, offs_d, stride_ot, stride_oh, store_mask)
        else:
            slot = tl.program_id(0) if MAPPED else tl.program_id(1)
            part = split * stride_ps + slot * stride_pt + head * stride_ph
            tl.store(part_out_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=store_mask)
            tl.store(part_max_ptr + part, m_i, mask=m_valid)
            tl.store(part_sum_ptr + part, l_i, mask=m_valid)
    else:
        part = split * stride_ps + q_rows * stride_pt + head * stride_ph
        tl.store(part_out_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=store_mask)
        tl.store(part_max_ptr + part, m_i, mask=m_valid)
        tl.store(part_sum_ptr + part, l_i, mask=m_valid)


@triton.jit
def _store_out(out_ptr, acc, l_i, q_rows, head, offs_d, stride_ot, stride_oh, store_mask):
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(
        out_ptr + q_rows[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=store_mask,
    )


@triton.jit(do_not_specialize=["seq_base", "stride_map"])
def _merge_row_splits_kernel(
    out_ptr,
    part_out_ptr,
    part_max_ptr,
    part_sum_ptr,
    ctx_lens_ptr,
    q_starts_ptr,
    tile_map_ptr,
    seq_base,
    stride_ot,
    stride_oh,
    stride_ps,
    stride_pt,
    stride_ph,
    stride_map,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    SPLIT_KEYS: tl.constexpr,
    MAPPED: tl.constexpr,
):
    """The merge of decode rows split by context (SPLIT_KEYS): program (r, head) merges row r's segments, if it
    had more than one (a row of one segment wrote its output itself)."""
    slot = tl.program_id(0)
    head = tl.program_id(1)
    if MAPPED:
        seq = tl.load(tile_map_ptr + slot)
        if seq < 0:
            return
    else:
        seq = seq_base + slot
    splits = tl.minimum(tl.cdiv(tl.load(ctx_lens_ptr + seq), SPLIT_KEYS), NUM_SPLITS)
    if splits == 1:
        return
    token = tl.load(q_starts_ptr + seq).to(tl.int64)
    offs_s = tl.arange(0, NUM_SPLITS)
    part = offs_s * stride_ps + slot * stride_pt + head * stride_ph
    _merge_into(
        out_ptr,
        part_out_ptr,
        part_max_ptr,
        part_sum_ptr,
        part,
        offs_s < splits,
        token,
        head,
        stride_ot,
        stride_oh,
        HEAD_DIM,
        BLOCK_D,
    )


@triton.jit
def _merge_into(
    out_ptr,
    part_out_ptr,
    part_max_ptr,
    part_sum_ptr,
    part,
    used,
    token,
    head,
    stride_ot,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One row's output from its segments' partials (`part`: their offsets; `used`: which segments it has), each
    weighted by its share of the softmax, written at (token, head)."""
    offs_d = tl.arange(0, BLOCK_D)
    m = tl.load(part_max_ptr + part, mask=used, other=float("-inf"))
    seg_sum = tl.load(part_sum_ptr + part, mask=used, other=0.0)
    m_max = tl.max(m, 0)
    weight = tl.where(m == float("-inf"), 0.0, tl.exp2(m - m_max))  # empty segments weigh nothing
    acc = tl.load(
        part_out_ptr + part[:, None] * HEAD_DIM + offs_d[None, :],
        mask=used[:, None] & (offs_d[None, :] < HEAD_DIM),
        other=0.0,
    )
    out = tl.sum(acc * weight[:, None], 0) / tl.sum(seg_sum * weight, 0)
    tl.store(
        out_ptr + token * stride_ot + head * stride_oh + offs_d,
        out.to(out_ptr.dtype.element_ty),
        mask=offs_d < HEAD_DIM,
    )


@triton.jit
def _merge_splits_kernel(
    out_ptr,
    part_out_ptr,
    part_max_ptr,
    part_sum_ptr,
    stride_ot,
    stride_oh,
    stride_ps,
    stride_pt,
    stride_ph,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    splits = tl.arange(0, NUM_SPLITS)
    part = splits * stride_ps + token * stride_pt + head * stride_ph
    _merge_into(
        out_ptr,
        part_out_ptr,
        part_max_ptr,
        part_sum_ptr,
        part,
        splits < NUM_SPLITS,
        token,
        head,
        stride_ot,
        stride_oh,
        HEAD_DIM,
        BLOCK_D,
    )


# Decode rows riding in a prefill step are launched with their keys cut into one segment per this many (up to
# _ROW_SPLITS segments), whatever the number of rows: the step's grid is fixed (a CUDA graph's), and a few rows over
# long contexts would otherwise leave most SMs idle while one program per (row, KV head) walks its whole context.
# On an H200, 15 rows over 16,640 keys (7B shape) took 0.48 ms a layer unsplit; 16 rows in 8 segments 0.17 ms
# (benchmarks/attention_tiles.py). Rows under this many keys stay one segment, which writes its output directly.
ROW_SPLIT_KEYS = 2048
_ROW_SPLITS = 8


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def decode_splits(num_programs: int, num_sms: int) -> int:
    """Key segments per decode sequence: enough programs for about two per SM, at most 16."""
    if num_programs >= num_sms:
        return 1
    return min(16, _next_pow2(math.ceil(2 * num_sms / num_programs)))


def tile_rows(max_q_len: int, group: int, head_dim: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_Q) of a launch: rows of one program's tile, and how many of a sequence's new tokens they
    hold (the GROUP query heads of each token share a KV head and fill the rows together)."""
    # decode: one token per sequence, the group's heads fill the rows
    rows = 16 if max_q_len == 1 else 64 if head_dim > 128 else 128
    block_m = max(rows, _next_pow2(group))
    return block_m, max(1, block_m // group)


def tile_map(q_lens: list[int], block_q: int, width: int, first: int = 0) -> list[list[int]]:
    """[sequence, query tile] of each program of a fixed-grid launch over sequences first, first + 1, ... with
    `q_lens` new tokens each, padded with [-1, 0] to `width` columns (a CUDA graph's grid cannot follow the step)."""
    seqs: list[int] = []
    tiles: list[int] = []
    for i, q_len in enumerate(q_lens):
        n = -(-q_len // block_q)
        seqs.extend([first + i] * n)
        tiles.extend(range(n))
    if len(seqs) > width:
        raise ValueError(f"{len(seqs)} query tiles do not fit a map of {width}")
    pad = width - len(seqs)
    return [seqs + [-1] * pad, tiles + [0] * pad]


def paged_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    tables: torch.Tensor,
    rows: torch.Tensor,
    ctx_lens: torch.Tensor,
    q_starts: torch.Tensor,
    max_q_len: int,
    block_size: int,
    scale: float,
    window: int | None = None,
    softcap: float | None = None,
    num_splits: int = 1,
    tiles: tuple[int, int, int] | None = None,
    decode_tail: int = 0,
    tile_maps: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Attention of every sequence's new tokens over its paged context (the new tokens' keys already written).

    query: [T, H, D] packed new tokens (last dim contiguous); key_cache / value_cache: [slots, Hkv, D];
    tables: [rows, max_blocks] int32 block ids; rows / ctx_lens: [B] int32 (each sequence's table row and context
    length including its new tokens); q_starts: [B + 1] int32 offsets of each sequence's tokens in `query`;
    max_q_len: the most new tokens of any sequence (a host int: it sizes the grid). Returns [T, H, D].
    tiles: (BLOCK_N, num_warps, num_stages) in place of the defaults (benchmarks/attention_tiles.py tries them).
    decode_tail: how many of the last sequences have one new token each (decode rows riding in a prefill step):
    they get a launch of their own with the decode tile, where the prefill tile (BLOCK_M rows for BLOCK_Q tokens of
    one sequence) would fill one token's GROUP rows and compute the rest for nothing over their whole context.
    tile_maps: a fixed grid for a CUDA graph of a mixed step, in place of max_q_len and decode_tail: two int32
    [2, n] maps from `tile_map`, the prefill sequences' tiles (prefill tile) and the decode rows' (decode tile).
    """
    if query.stride(-1) != 1:
        query = query.contiguous()
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    args = (query, key_cache, value_cache, tables, rows, ctx_lens, q_starts, block_size, scale, window, softcap, out)
    batch = rows.shape[0]
    if tile_maps is not None:
        _launch(*args, 0, 0, 2, 1, tiles, tile_maps[0])
        _launch(*args, 0, 0, 1, _ROW_SPLITS, None, tile_maps[1], split_keys=ROW_SPLIT_KEYS)
    elif max_q_len > 1 and 0 < decode_tail < batch:
        head = batch - decode_tail
        _launch(*args, 0, head, max_q_len, 1, tiles)
        _launch(*args, head, decode_tail, 1, _ROW_SPLITS, None, split_keys=ROW_SPLIT_KEYS)
    else:
        _launch(*args, 0, batch, max_q_len, num_splits, tiles)
    return out


def _launch(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    tables: torch.Tensor,
    rows: torch.Tensor,
    ctx_lens: torch.Tensor,
    q_starts: torch.Tensor,
    block_size: int,
    scale: float,
    window: int | None,
    softcap: float | None,
    out: torch.Tensor,
    first: int,
    batch: int,
    max_q_len: int,
    num_splits: int,
    tiles: tuple[int, int, int] | None,
    programs: torch.Tensor | None = None,
    split_keys: int = 0,
) -> None:
    """One kernel launch over the sequences first .. first + batch - 1 of `rows` (their tokens' offsets in
    `q_starts`), or over the programs of `programs`, writing into `out`. The whole index tensors go in with an
    offset, never slices of them: a slice starts at another alignment, and Triton would compile a variant for it.
    `split_keys` (decode rows): each row's keys in segments of that many, up to `num_splits` of them, the partials
    kept per program row (map column or sequence of the launch) rather than per token."""
    tokens, heads, head_dim = query.shape
    kv_heads = key_cache.shape[1]
    group = heads // kv_heads
    block_m, block_q = tile_rows(max_q_len, group, head_dim)
    # Tile settings measured on an H100 with the 7B shape (benchmarks/attention_tiles.py, RESULTS.md): decode gains
    # 18% at 16K contexts from two stages, a 2,048-token chunk over a 16K prefix 19% from four warps.
    if max_q_len == 1:
        block_n, warps, stages = 64, 4, 2
    else:
        block_n, warps, stages = 64, 4, 3
        num_splits = 1
    if tiles is not None:
        block_n, warps, stages = tiles
    block_d = max(16, _next_pow2(head_dim))
    precision = "ieee" if query.dtype == torch.float32 else "tf32"
    # partials per token, or with split_keys per program row
    part_rows = tokens if not split_keys else programs.shape[1] if programs is not None else batch
    if num_splits > 1:
        part_out = torch.empty(num_splits, part_rows, heads, head_dim, dtype=torch.float32, device=query.device)
        part_max = torch.empty(num_splits, part_rows, heads, dtype=torch.float32, device=query.device)
        part_sum = torch.empty_like(part_max)
    else:
        part_out = part_max = part_sum = out  # unused
    if programs is not None:
        grid = (programs.shape[1], 1, kv_heads * num_splits)
    else:
        grid = (triton.cdiv(max_q_len, block_q), batch, kv_heads * num_splits)
    _paged_attention_kernel[grid](
        out,
        query,
        key_cache,
        value_cache,
        tables,
        rows,
        ctx_lens,
        q_starts,
        part_out,
        part_max,
        part_sum,
        programs if programs is not None else rows,  # unused unless MAPPED
        first,
        float(scale),
        float(softcap or 0.0),
        query.stride(0),
        query.stride(1),
        out.stride(0),
        out.stride(1),
        key_cache.stride(0),
        key_cache.stride(1),
        value_cache.stride(0),
        value_cache.stride(1),
        tables.stride(0),
        part_rows * heads,
        heads,
        1,
        programs.stride(0) if programs is not None else 0,
        GROUP=group,
        BLOCK_Q=block_q,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        PAGE=block_size,
        WINDOW=int(window or 0),
        SOFTCAP=bool(softcap),
        NUM_SPLITS=num_splits,
        PRECISION=precision,
        MAPPED=programs is not None,
        SPLIT_KEYS=split_keys,
        num_warps=warps,
        num_stages=stages,
    )
    if num_splits > 1 and split_keys:
        _merge_row_splits_kernel[(part_rows, heads)](
            out,
            part_out,
            part_max,
            part_sum,
            ctx_lens,
            q_starts,
            programs if programs is not None else rows,  # unused unless MAPPED
            first,
            out.stride(0),
            out.stride(1),
            part_rows * heads,
            heads,
            1,
            programs.stride(0) if programs is not None else 0,
            HEAD_DIM=head_dim,
            BLOCK_D=block_d,
            NUM_SPLITS=num_splits,
            SPLIT_KEYS=split_keys,
            MAPPED=programs is not None,
            num_warps=4,
        )
    elif num_splits > 1:
        _merge_splits_kernel[(tokens, heads)](
            out,
            part_out,
            part_max,
            part_sum,
            out.stride(0),
            out.stride(1),
            tokens * heads,
            heads,
            1,
            HEAD_DIM=head_dim,
            BLOCK_D=block_d,
            NUM_SPLITS=num_splits,
            num_warps=4,
        )
