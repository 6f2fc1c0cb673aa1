"""Decode steps replayed as CUDA graphs, one graph per batch-size bucket.

A decode step of a small model is a few hundred tiny kernels; launching them from Python costs more
than running them. Each bucket's graph is captured once over static input buffers: block tables are
as wide as `max_model_len` allows, padded rows write to the scratch block 0 and their logits are dropped.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import torch

from swiftops.engines.pt.attention import CONTEXT_KWARG, StepContext
from swiftops.engines.pt.kv_cache import PagedKVCache
from swiftops.engines.pt.mm_prefill import uses_mrope

logger = logging.getLogger(__name__)


def batch_buckets(max_batch: int) -> list[int]:
    sizes = [1, 2, 4, 8]
    while sizes[-1] < max_batch:
        sizes.append(sizes[-1] + (8 if sizes[-1] < 32 else 16 if sizes[-1] < 128 else 32))
    return [s for s in sizes if s < max_batch] + [max_batch]


class CudaGraphDecoder:
    def __init__(self, model: Any, cache: PagedKVCache, device: torch.device, max_batch: int,
                 max_model_len: int, lora: Any = None) -> None:
        self.model = model
        self.lora = lora
        self.cache = cache
        self.device = device
        self.max_blocks = cache.blocks_needed(max_model_len)
        self.buckets = batch_buckets(max_batch)
        n = self.buckets[-1]
        self.input_ids = torch.zeros(1, n, dtype=torch.long, device=device)
        self.positions = torch.zeros(1, n, dtype=torch.long, device=device)
        self.slots = torch.zeros(n, dtype=torch.long, device=device)
        self.block_tables = torch.zeros(n, self.max_blocks, dtype=torch.long, device=device)
        self.lora_slots = torch.zeros(n, dtype=torch.long, device=device)
        self.mrope = uses_mrope(model)
        self.rope = torch.zeros(3, n, dtype=torch.long, device=device)  # (t, h, w) positions for M-RoPE models
        self.key_range = torch.arange(self.max_blocks * cache.block_size, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None

    def _forward(self, batch: int) -> torch.Tensor:
        if self.lora is not None:  # the graph always applies LoRA by gathering each row's slot (0: zeros)
            self.lora.gather = True
            self.lora.set_step(self.lora_slots[:batch], [])
        pos = self.positions[0, :batch]
        ctx = StepContext(self.cache.keys, self.cache.values, self.cache.block_size,
                          slot_mapping=self.slots[:batch], decode=True, block_tables=self.block_tables[:batch],
                          key_mask=(self.key_range[None, :] <= pos[:, None])[:, None, None, :])
        position_ids = self.positions[:, :batch]
        if self.mrope:
            position_ids = torch.cat([position_ids, self.rope[:, :batch]]).unsqueeze(1)
        out = self.model(input_ids=self.input_ids[:, :batch], position_ids=position_ids,
                         use_cache=False, logits_to_keep=0, **{CONTEXT_KWARG: ctx})
        return out.logits[0]

    def capture(self) -> None:
        torch.cuda.synchronize(self.device)
        stream = torch.cuda.Stream(device=self.device)
        with torch.inference_mode():
            for batch in reversed(self.buckets):  # largest first, so smaller graphs reuse its memory pool
                stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(stream):
                    for _ in range(2):
                        self._forward(batch)
                torch.cuda.current_stream(self.device).wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool):
                    logits = self._forward(batch)
                if self.pool is None:
                    self.pool = graph.pool()
                self.graphs[batch] = (graph, logits)
        torch.cuda.synchronize(self.device)
        if self.lora is not None:
            self.lora.gather = False
            self.lora.set_step(None, [])
        logger.info("captured CUDA graphs for decode batch sizes %s", self.buckets)

    def run(self, ids: list[int], positions: list[int], rope: Optional[torch.Tensor], slots: list[int],
            tables: list[list[int]], lora_slots: list[int]) -> torch.Tensor:
        batch = len(ids)
        bucket = next(b for b in self.buckets if b >= batch)
        pad = bucket - batch
        self.input_ids[0, :bucket].copy_(torch.tensor(ids + [0] * pad), non_blocking=True)
        self.positions[0, :bucket].copy_(torch.tensor(positions + [0] * pad), non_blocking=True)
        if rope is not None:
            self.rope[:, :batch].copy_(rope, non_blocking=True)
        self.slots[:bucket].copy_(torch.tensor(slots + [0] * pad), non_blocking=True)
        rows = [t + [0] * (self.max_blocks - len(t)) for t in tables] + [[0] * self.max_blocks] * pad
        self.block_tables[:bucket].copy_(torch.tensor(rows), non_blocking=True)
        if self.lora is not None:
            self.lora_slots[:bucket].copy_(torch.tensor(lora_slots + [0] * pad), non_blocking=True)
        graph, logits = self.graphs[bucket]
        graph.replay()
        return logits[:batch]


def can_use_graphs(device: torch.device, enforce_eager: bool) -> bool:
    return device.type == "cuda" and not enforce_eager

