"""Which KV-cache blocks each sequence holds, and the block tables the attention kernels read.

The KV tensors themselves live in `PagedKVCache`; this class only does the bookkeeping. Each sequence that holds
blocks owns one row of a device table (`tables`, int32 [max_seqs + 1, blocks for max_model_len]). A row grows by
appending blocks: new entries are queued and written to the device in one small copy per step (`sync`), so the
table is never rebuilt or padded on the host. Row 0 and block 0 are scratch: padded rows of a CUDA-graph batch read
row 0, whose entries all point at block 0, and write there, never into a live sequence.
"""
from __future__ import annotations

import torch

from swiftops.engines.pt.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, max_seqs: int, max_model_len: int,
                 device: torch.device) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.device = device
        self.max_blocks_per_seq = self.blocks_needed(max_model_len)
        self._free_blocks = list(range(num_blocks - 1, 0, -1))  # a stack; block 0 is the scratch block
        self._free_rows = list(range(max_seqs, 0, -1))  # row 0 is the scratch row
        self.tables = torch.zeros(max_seqs + 1, self.max_blocks_per_seq, dtype=torch.int32, device=device)
        self._pending: list[int] = []  # (row, column, block) triples not yet written to `tables`

    @property
    def num_free(self) -> int:
        return len(self._free_blocks)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def can_admit(self, seq: Sequence, num_tokens: int) -> bool:
        """Blocks for `num_tokens` and a table row are free (nothing is taken)."""
        missing = self.blocks_needed(num_tokens) - len(seq.block_table)
        return missing <= self.num_free and (seq.table_row or self._free_rows)

    def ensure_capacity(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow `seq`'s blocks to hold `num_tokens`; False (nothing taken) if too few blocks or rows are free."""
        missing = self.blocks_needed(num_tokens) - len(seq.block_table)
        if missing <= 0:
            return True
        if missing > len(self._free_blocks) or not (seq.table_row or self._free_rows):
            return False
        if not seq.table_row:
            seq.table_row = self._free_rows.pop()
        column = len(seq.block_table)
        for _ in range(missing):
            block = self._free_blocks.pop()
            seq.block_table.append(block)
            self._pending += (seq.table_row, column, block)
            column += 1
        return True

    def release(self, seq: Sequence) -> None:
        """Free `seq`'s blocks and row (finished, aborted or preempted). Its stale table entries are never read:
        the kernels read a row only up to the context of the sequence that holds it."""
        self._free_blocks.extend(reversed(seq.block_table))
        seq.block_table.clear()
        if seq.table_row:
            self._free_rows.append(seq.table_row)
            seq.table_row = 0

    def sync(self) -> None:
        """Write the queued table entries to the device: one copy and one scatter per step, whatever the batch."""
        if not self._pending:
            return
        entries = torch.tensor(self._pending, dtype=torch.int32).view(-1, 3)
        self._pending = []
        if self.device.type == "cuda":
            entries = entries.pin_memory().to(self.device, non_blocking=True)
        rows, columns = entries[:, 0].long(), entries[:, 1].long()
        self.tables[rows, columns] = entries[:, 2]

    def slot(self, seq: Sequence, position: int) -> int:
        return seq.block_table[position // self.block_size] * self.block_size + position % self.block_size
