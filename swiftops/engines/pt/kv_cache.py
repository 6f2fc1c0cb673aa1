"""The paged KV cache's tensors, allocated once: per layer, keys and values for `num_blocks * block_size` slots.

Which blocks belong to which sequence is `BlockManager`'s business; this module only holds the memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CacheShape:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * torch.finfo(self.dtype).bits // 8


class PagedKVCache:
    def __init__(self, shape: CacheShape, num_blocks: int, block_size: int, device: torch.device) -> None:
        self.shape = shape
        self.block_size = block_size
        self.num_blocks = num_blocks
        slots = num_blocks * block_size
        # keys[layer]: [slots, kv_heads, head_dim]; zero-filled so never-written slots stay finite.
        self.keys = [
            torch.zeros(slots, shape.num_kv_heads, shape.head_dim, dtype=shape.dtype, device=device)
            for _ in range(shape.num_layers)
        ]
        self.values = [torch.zeros_like(k) for k in self.keys]

    @staticmethod
    def num_blocks_for(budget_bytes: int, shape: CacheShape, block_size: int) -> int:
        return max(2, budget_bytes // (shape.bytes_per_token * block_size))
