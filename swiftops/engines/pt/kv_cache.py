"""A paged KV cache allocated once: per layer, keys and values for `num_blocks * block_size` token slots.

Block 0 is never handed out: padded rows of a batch write there, so padding never touches a live sequence.
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


class BlockAllocator:
    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, 0, -1))  # a stack; block 0 is the scratch block

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, count: int) -> list[int]:
        if count > len(self._free):
            raise MemoryError("out of KV-cache blocks")
        return [self._free.pop() for _ in range(count)]

    def free(self, blocks: list[int]) -> None:
        self._free.extend(reversed(blocks))


class PagedKVCache:
    def __init__(self, shape: CacheShape, num_blocks: int, block_size: int, device: torch.device) -> None:
        self.shape = shape
        self.block_size = block_size
        self.num_blocks = num_blocks
        slots = num_blocks * block_size
        # keys[layer]: [slots, kv_heads, head_dim]; zero-filled so never-written slots stay finite.
        self.keys = [torch.zeros(slots, shape.num_kv_heads, shape.head_dim, dtype=shape.dtype, device=device)
                     for _ in range(shape.num_layers)]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.allocator = BlockAllocator(num_blocks)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def ensure_capacity(self, block_table: list[int], num_tokens: int) -> bool:
        """Grow a sequence's block table to hold `num_tokens`; False if the cache has too few free blocks."""
        missing = self.blocks_needed(num_tokens) - len(block_table)
        if missing <= 0:
            return True
        if missing > self.allocator.num_free:
            return False
        block_table.extend(self.allocator.allocate(missing))
        return True

    def release(self, block_table: list[int]) -> None:
        self.allocator.free(block_table)
        block_table.clear()

    @staticmethod
    def num_blocks_for(budget_bytes: int, shape: CacheShape, block_size: int) -> int:
        return max(2, budget_bytes // (shape.bytes_per_token * block_size))
