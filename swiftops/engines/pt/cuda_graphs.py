"""Decode steps replayed as CUDA graphs, one graph per batch-size bucket.

A decode step of a small model is a few hundred tiny kernels; launching them from Python costs more
than running them. Each bucket's graph is captured once over static input buffers (token ids, positions,
block-table rows, LoRA slots). Inside the graph, cache slots are looked up in the block manager's device
table and the Triton kernels read each sequence's context up to its length, so nothing captured depends on
`max_model_len`: a graph's memory is the activations of its batch. Padded rows use the scratch row 0, which
points at the scratch block 0, and their logits are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from swiftops.engines.pt.attention import CONTEXT_KWARG
from swiftops.engines.pt.block_manager import BlockManager
from swiftops.engines.pt.host_staging import staging_for
from swiftops.engines.pt.kv_cache import PagedKVCache
from swiftops.engines.pt.mm_prefill import uses_mrope
from swiftops.engines.pt.model_runner import decode_context

logger = logging.getLogger(__name__)


def batch_buckets(max_batch: int) -> list[int]:
    sizes = [1, 2, 4, 8]
    while sizes[-1] < max_batch:
        sizes.append(sizes[-1] + (8 if sizes[-1] < 32 else 16 if sizes[-1] < 128 else 32))
    return [s for s in sizes if s < max_batch] + [max_batch]


class CudaGraphDecoder:
    def __init__(
        self,
        model: Any,
        cache: PagedKVCache,
        blocks: BlockManager,
        device: torch.device,
        max_batch: int,
        lora: Any = None,
    ) -> None:
        self.model = model
        self.lora = lora
        self.cache = cache
        self.blocks = blocks
        self.device = device
        self.buckets = batch_buckets(max_batch)
        n = self.buckets[-1]
        self.inputs = torch.zeros(4, n, dtype=torch.long, device=device)  # ids, positions, table rows, LoRA slots
        self.mrope = uses_mrope(model)
        self.rope = torch.zeros(3, n, dtype=torch.long, device=device)  # (t, h, w) positions for M-RoPE models
        self.num_sms = torch.cuda.get_device_properties(device).multi_processor_count
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool: Any = None  # the first graph's memory pool (torch's handle), shared by the later graphs
        self.last_bucket = 0

    def _forward(self, batch: int) -> torch.Tensor:
        ids, positions, rows, lora_slots = self.inputs[:, :batch]
        if self.lora is not None:  # the graph always applies LoRA by gathering each row's slot (0: zeros)
            self.lora.gather = True
            self.lora.set_step(lora_slots, [])
        from swiftops.engines.pt.triton_attention import decode_splits  # Triton: CUDA builds of torch only

        splits = decode_splits(batch * self.cache.shape.num_kv_heads, self.num_sms)
        ctx = decode_context(self.cache, self.blocks, positions, rows, use_triton=True, num_splits=splits)
        position_ids = positions[None]
        if self.mrope:
            position_ids = torch.cat([position_ids, self.rope[:, :batch]]).unsqueeze(1)
        out = self.model(
            input_ids=ids[None], position_ids=position_ids, use_cache=False, logits_to_keep=0, **{CONTEXT_KWARG: ctx}
        )
        return out.logits[0]

    def capture(self) -> None:
        self.graphs, self.pool = capture_graphs(self._forward, self.buckets, self.device)
        if self.lora is not None:
            self.lora.gather = False
            self.lora.set_step(None, [])
        logger.info("captured CUDA graphs for decode batch sizes %s", self.buckets)

    def run(
        self,
        ids: list[int] | torch.Tensor,
        positions: list[int],
        rows: list[int],
        lora_slots: list[int],
        rope: torch.Tensor | None,
    ) -> torch.Tensor:
        """Replay the smallest graph that holds the batch. `ids` may be a device tensor: the tokens the previous
        step sampled, not yet seen by the host (pipelined decode)."""
        batch = len(ids)
        bucket = next(b for b in self.buckets if b >= batch)
        self.last_bucket = bucket  # which graph ran (the step clock keys its time by it)
        # One host-to-device copy of the step's inputs; padded rows read row 0 at position 0 (the scratch block).
        staging = staging_for(self.device)
        if isinstance(ids, torch.Tensor):
            self.inputs[0, :batch].copy_(ids, non_blocking=True)
            staging.copy_into(self.inputs[1:, :batch], [positions, rows, lora_slots])
        else:
            staging.copy_into(self.inputs[:, :batch], [ids, positions, rows, lora_slots])
        if bucket > batch:
            self.inputs[:, batch:bucket].zero_()
        if rope is not None:
            self.rope[:, :batch].copy_(rope, non_blocking=True)
        graph, logits = self.graphs[bucket]
        graph.replay()
        return logits[:batch]


def capture_graphs(
    forward: Callable[[int], torch.Tensor], sizes: list[int], device: torch.device, pool: Any = None
) -> tuple[dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]], Any]:
    """One graph of `forward(size)` per size, each after two warm-up runs on a side stream (Triton compiles its
    kernels outside the capture). Largest first, all in one memory pool (`pool`, or the first graph's), so the
    smaller graphs reuse its memory: safe because replays never overlap. Returns the graphs with their output
    tensors, and the pool."""
    graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
    torch.cuda.synchronize(device)
    stream = torch.cuda.Stream(device=device)
    with torch.inference_mode():
        for size in sorted(sizes, reverse=True):
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                for _ in range(2):
                    forward(size)
            torch.cuda.current_stream(device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                output = forward(size)
            if pool is None:
                pool = graph.pool()
            graphs[size] = (graph, output)
    torch.cuda.synchronize(device)
    return graphs, pool


def can_use_graphs(device: torch.device, enforce_eager: bool) -> bool:
    from swiftops.engines.pt.attention import triton_available

    return device.type == "cuda" and not enforce_eager and triton_available(device)
