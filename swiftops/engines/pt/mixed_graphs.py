"""Mixed prefill/decode steps replayed as CUDA graphs, one graph per token-count bucket.

A step in which new prompts join a decode batch runs every token of the step through one forward. Eager, that
forward of a small model is a few hundred kernel launches from Python, and the host takes longer to issue them than
the GPU takes to run them: on an H100 a 0.5B model's 2,048-token mixed step took about 21 ms launch to launch, and
every decoding stream waited that long for its next token (benchmarks/RESULTS.md). A graph replays the launches in
one call.

Everything a graph reads is a static device buffer, filled by one host-to-device copy per step: the step's tokens
padded to the bucket (token ids, positions, table rows), the sequences padded to the largest batch (table rows,
context lengths, token offsets; padded sequences have no tokens), the token whose logits each sampled sequence
keeps, and the attention kernel's tile maps, which give each program of the fixed grid its (sequence, query tile)
or nothing (triton_attention.tile_map). Padded tokens write their keys into the scratch block 0, as the decode graphs'
padded rows do.

Not graphed (the step runs eagerly): LoRA engines (the graph-friendly LoRA path gathers a [tokens, rank, in] copy of
the adapters per linear, too much at a prefill's token count), multimodal prompts and M-RoPE models (their inputs
are embeddings and 3-D positions built per prompt), and steps larger than the largest bucket.

On by default; SWIFTOPS_PT_MIXED_GRAPHS=0 (read by the engine) runs these steps eagerly.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import numpy as np
import torch

from swiftops.engines.pt.attention import CONTEXT_KWARG, StepContext
from swiftops.engines.pt.block_manager import BlockManager
from swiftops.engines.pt.cuda_graphs import capture_graphs
from swiftops.engines.pt.host_staging import staging_for
from swiftops.engines.pt.kv_cache import PagedKVCache
from swiftops.engines.pt.model_runner import PagedRunner, relative_error, within_tolerance
from swiftops.engines.pt.sequence import SamplingParams, Sequence

logger = logging.getLogger(__name__)

BUCKET_STEP = 256  # buckets every 256 tokens up to _DENSE_UP_TO, then doubling
_DENSE_UP_TO = 2048


def token_buckets(max_tokens: int) -> list[int]:
    """Token counts of the captured graphs. A step runs as its bucket's size, so padding is computed for nothing:
    for a model whose steps are GPU-bound (7B), a 1,100-token step padded to 2,048 would cost more than it
    saves in launches. Hence a bucket every 256 tokens up to 2,048 (where the server's steps that prefill beside
    decode rows mostly fall), then doubling, and the largest step itself (the step budget: 8,192 tokens on a GPU
    by default)."""
    sizes = list(range(BUCKET_STEP, min(max_tokens, _DENSE_UP_TO) + 1, BUCKET_STEP))
    while sizes and sizes[-1] < max_tokens:
        sizes.append(sizes[-1] * 2)
    return [s for s in sizes if s < max_tokens] + [max_tokens]


class _Layout:
    """Offsets of one bucket's inputs in its flat int64 buffer (one host-to-device copy per step): per token the
    id, position and table row; per sequence the table row, context length and kept token, then the token offsets
    (one more) and the two tile maps."""

    def __init__(self, tokens: int, seqs: int, prefill_tiles: int) -> None:
        self.tokens, self.seqs, self.prefill_tiles = tokens, seqs, prefill_tiles
        self.size = 3 * tokens + 4 * seqs + 1 + 2 * prefill_tiles + 2 * seqs

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        t, s, a = self.tokens, self.seqs, self.prefill_tiles
        token_part = flat[: 3 * t].view(3, t)
        rest = flat[3 * t :]
        return {
            "ids": token_part[0],
            "positions": token_part[1],
            "token_rows": token_part[2],
            "rows": rest[:s],
            "ctx_lens": rest[s : 2 * s],
            "keep": rest[2 * s : 3 * s],
            "q_starts": rest[3 * s : 4 * s + 1],
            "prefill_map": rest[4 * s + 1 : 4 * s + 1 + 2 * a].view(2, a),
            "decode_map": rest[4 * s + 1 + 2 * a :].view(2, s),
        }


class CudaGraphMixedSteps:
    def __init__(
        self,
        model: Any,
        cache: PagedKVCache,
        blocks: BlockManager,
        device: torch.device,
        max_batch: int,
        max_tokens: int,
    ) -> None:
        from swiftops.engines.pt.triton_attention import tile_rows  # Triton: CUDA builds of torch only

        self.model = model
        self.cache = cache
        self.blocks = blocks
        self.device = device
        self.max_seqs = max_batch
        self.buckets = token_buckets(max_tokens)
        shape = cache.shape
        group = model.config.get_text_config().num_attention_heads // shape.num_kv_heads
        self.prefill_q = tile_rows(2, group, shape.head_dim)[1]
        self.decode_q = tile_rows(1, group, shape.head_dim)[1]
        self.layouts: dict[int, _Layout] = {}
        self.inputs: dict[int, torch.Tensor] = {}
        for tokens in self.buckets:
            # a sequence with n tokens has ceil(n / BLOCK_Q) tiles: at most tokens / BLOCK_Q + one per sequence
            layout = _Layout(tokens, max_batch, tokens // self.prefill_q + max_batch)
            self.layouts[tokens] = layout
            self.inputs[tokens] = torch.zeros(layout.size, dtype=torch.long, device=device)
            self.idle(tokens)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.replays = 0  # steps run through a graph (tests and benchmarks read it)
        self.logits: torch.Tensor | None = None

    @property
    def max_tokens(self) -> int:
        return self.buckets[-1]

    def idle(self, tokens: int) -> None:
        """A step with no sequences: every program of the tile maps exits, every token writes the scratch block."""
        views = self.layouts[tokens].views(self.inputs[tokens])
        self.inputs[tokens].zero_()
        views["prefill_map"][0].fill_(-1)
        views["decode_map"][0].fill_(-1)

    def forward(self, tokens: int) -> torch.Tensor:
        """The bucket's forward over its static inputs: what a graph captures (and, eagerly, what tests run)."""
        v = self.layouts[tokens].views(self.inputs[tokens])
        positions, token_rows = v["positions"], v["token_rows"]
        bs = self.blocks.block_size
        slots = self.blocks.tables[token_rows, positions // bs].long() * bs + positions % bs
        as_int32 = [v[k].to(torch.int32) for k in ("rows", "ctx_lens", "q_starts", "prefill_map", "decode_map")]
        rows, ctx_lens, q_starts, prefill_map, decode_map = as_int32
        ctx = StepContext(
            self.cache.keys,
            self.cache.values,
            bs,
            self.blocks.tables,
            rows,
            ctx_lens,
            q_starts,
            slots,
            2,  # not a decode step; the tile maps size the grid
            True,
            tile_maps=(prefill_map, decode_map),
        )
        out = self.model(
            input_ids=v["ids"][None],
            position_ids=positions[None],
            use_cache=False,
            logits_to_keep=v["keep"],
            **{CONTEXT_KWARG: ctx},
        )
        # Every bucket's graph leaves its logits in one buffer (allocated by the first, uncaptured, warm-up run):
        # one [max_seqs, vocab] tensor instead of one per bucket held by the pool.
        logits = out.logits[0]
        if self.logits is None:
            self.logits = torch.empty_like(logits)
        return self.logits.copy_(logits)

    def capture(self, pool: Any = None) -> Any:
        """Capture every bucket's graph in `pool` (the decode graphs'); returns the pool."""
        self.graphs, pool = capture_graphs(self.forward, self.buckets, self.device, pool)
        logger.info("captured CUDA graphs for mixed prefill/decode steps of %s tokens", self.buckets)
        return pool

    def fits(self, num_tokens: int, num_seqs: int) -> bool:
        return num_tokens <= self.max_tokens and num_seqs <= self.max_seqs

    def stage(
        self,
        ids: list[int],
        positions: list[int],
        token_rows: list[int],
        rows: list[int],
        q_lens: list[int],
        ctx_lens: list[int],
        keep: list[int],
        decode_tail: int,
        tail_tokens: torch.Tensor | None = None,
    ) -> int:
        """Copy one step into the smallest bucket that holds it; returns the bucket. The last `decode_tail`
        sequences are decode rows (one token each); `tail_tokens`: their token ids on the device, in place of
        theirs in `ids` (pipelined steps)."""
        from swiftops.engines.pt.triton_attention import tile_map

        n, seqs = len(ids), len(rows)
        tokens = next(b for b in self.buckets if b >= n)
        layout = self.layouts[tokens]
        pad_t, pad_s = tokens - n, layout.seqs - seqs
        head = seqs - decode_tail
        q_starts = [0, *itertools.accumulate(q_lens)]
        prefill_map = tile_map(q_lens[:head], self.prefill_q, layout.prefill_tiles)
        decode_map = tile_map(q_lens[head:], self.decode_q, layout.seqs, first=head)
        zeros_t, zeros_s = [0] * pad_t, [0] * pad_s
        parts = (
            *(ids, zeros_t, positions, zeros_t, token_rows, zeros_t),  # per token, padded to the bucket
            *(rows, zeros_s, ctx_lens, zeros_s, keep, [0] * (layout.seqs - len(keep))),  # per sequence, padded
            *(q_starts, [n] * pad_s),  # padded sequences start (and end) after the last token
            *prefill_map,
            *decode_map,
        )
        # numpy reads the ints straight from the chain: torch.tensor over a list of a 1,024-token bucket's ~5,300
        # ints took 0.40 ms of the step's host time, this 0.14 (on the 2-core development machine).
        flat = np.fromiter(itertools.chain.from_iterable(parts), dtype=np.int64)  # copy_ checks the size
        staging_for(self.device).copy_into(self.inputs[tokens], flat)
        if tail_tokens is not None:  # the ids come first in the buffer; the decode rows' are the last real ones
            self.inputs[tokens][n - decode_tail : n].copy_(tail_tokens)
        return tokens

    def replay(self, tokens: int, num_keep: int) -> torch.Tensor:
        """The bucket's graph over the staged step; a bucket never captured (CPU, where the tests run the same
        forward through Triton's interpreter) runs it eagerly."""
        if tokens not in self.graphs:
            return self.forward(tokens)[:num_keep]
        graph, logits = self.graphs[tokens]
        graph.replay()
        self.replays += 1
        return logits[:num_keep]


def mixed_steps_agree(
    model: Any, cache: PagedKVCache, blocks: BlockManager, device: torch.device, mixed: CudaGraphMixedSteps
) -> tuple[bool, str | None]:
    """Start-up check: a mixed step (a 10-token prompt and a decode row over a 6-token context) through the graphs
    gives the eager step's logits. Returns (agrees, why not)."""
    gen = torch.Generator().manual_seed(1)
    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(0, max(2, min(vocab, 1000)), (16,), generator=gen).tolist()
    prompt = Sequence(prompt_ids=ids[:10], params=SamplingParams(max_tokens=4), sink=lambda out: None)
    decoding = Sequence(prompt_ids=ids[10:15], params=SamplingParams(max_tokens=4), sink=lambda out: None)
    eager = PagedRunner(model, cache, blocks, device)
    graphed = PagedRunner(model, cache, blocks, device, mixed_graphs=mixed)
    try:
        with torch.inference_mode():
            for seq, n in ((prompt, 10), (decoding, 6)):
                if not blocks.ensure_capacity(seq, n):
                    return False, "the KV cache cannot hold the check's 16 tokens"
            blocks.sync()
            eager.prefill([(decoding, 5)])
            decoding.num_computed = 5
            decoding.output_ids.append(ids[15])
            step = [(prompt, 10), (decoding, 1)]
            want = eager.prefill(step, decode_tail=1).logits.float()
            got = graphed.prefill(step, decode_tail=1).logits.float()
        error = relative_error(got, want)
        if not within_tolerance(error, cache.shape.dtype):
            return False, f"a captured step's logits differ from the eager step's (relative error {error:.2e})"
        return True, None
    finally:
        blocks.release(prompt)
        blocks.release(decoding)
