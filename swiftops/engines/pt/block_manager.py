"""Which KV-cache blocks each sequence holds, the block tables the attention kernels read, and the prefix cache.

The KV tensors themselves live in `PagedKVCache`; this class only does the bookkeeping. Each sequence that holds
blocks owns one row of a device table (`tables`, int32 [max_seqs + 1, blocks for max_model_len]). A row grows by
appending blocks: new entries are queued and written to the device in one small copy per step (`sync`), so the
table is never rebuilt or padded on the host. Row 0 and block 0 are scratch: padded rows of a CUDA-graph batch read
row 0, whose entries all point at block 0, and write there, never into a live sequence.

Prefix caching (vLLM's automatic prefix caching): a full block whose tokens are computed is offered to the cache
under its chained hash (`prefix_hash`). A new sequence takes the longest run of cached blocks matching its first
blocks and prefills only the rest. Blocks are reference-counted: a block is shared by every sequence whose table
holds it, and nobody writes into a cached block (a sequence writes only at positions past its cached prefix, in
blocks of its own). A block nobody holds stays cached, in least-recently-freed order, until a new block is needed
and no never-cached block is left; only then is it evicted (its hash forgotten) and reused.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import cast

import torch

from swiftops.engines.pt.host_staging import staging_for
from swiftops.engines.pt.prefix_hash import extend_block_hashes
from swiftops.engines.pt.sequence import Sequence


class BlockManager:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        max_seqs: int,
        max_model_len: int,
        device: torch.device,
        prefix_caching: bool = False,
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.device = device
        self.prefix_caching = prefix_caching
        self.max_blocks_per_seq = self.blocks_needed(max_model_len)
        self._empty = list(range(num_blocks - 1, 0, -1))  # a stack of never-cached free blocks; 0 is scratch
        self._evictable: OrderedDict[int, None] = OrderedDict()  # cached blocks nobody holds, least recent first
        self._refs = [0] * num_blocks
        self._hash_of: list[bytes | None] = [None] * num_blocks
        self._cached: dict[bytes, int] = {}  # block hash -> block
        self._free_rows = list(range(max_seqs, 0, -1))  # row 0 is the scratch row
        self.tables = torch.zeros(max_seqs + 1, self.max_blocks_per_seq, dtype=torch.int32, device=device)
        self._pending: list[int] = []  # (row, column, block) triples not yet written to `tables`
        # vLLM's prefix-cache counters, in tokens: looked up at each admission, and found in the cache.
        self.queries = 0
        self.hits = 0

    @property
    def num_free(self) -> int:
        """Blocks a sequence can take now: never-cached ones, and cached ones nobody holds (evicted on the way)."""
        return len(self._empty) + len(self._evictable)

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- the prefix cache ----------------------------------------------------------------------------------
    def cached_prefix(self, seq: Sequence) -> list[int]:
        """The cached blocks that hold `seq`'s first tokens (nothing is taken). Its last token is never among
        them: the model must run at least one token of a sequence to give it logits."""
        if not self.prefix_caching or seq.block_table:
            return []
        wanted = (seq.num_tokens - 1) // self.block_size
        found: list[int] = []
        for block_hash in extend_block_hashes(seq, wanted, self.block_size)[:wanted]:
            block = self._cached.get(block_hash)
            if block is None:
                break
            found.append(block)
        return found

    def take_prefix(self, seq: Sequence, found: list[int]) -> int:
        """Give `seq` (admitted, no blocks yet) the cached blocks `found` and a table row; returns the tokens they
        hold, which `seq` need not compute. Counts the lookup (queries) and what it found (hits)."""
        if not self.prefix_caching:
            return 0
        self.queries += seq.num_tokens
        if not found:
            return 0
        if not seq.table_row:
            seq.table_row = self._free_rows.pop()
        for column, block in enumerate(found):
            if self._refs[block] == 0:
                del self._evictable[block]
            self._refs[block] += 1
            seq.block_table.append(block)
            self._pending += (seq.table_row, column, block)
        seq.num_cached_blocks = len(found)
        tokens = len(found) * self.block_size
        self.hits += tokens
        return tokens

    def cache_computed(self, seq: Sequence, num_computed: int) -> list[int]:
        """Offer `seq`'s full blocks within its first `num_computed` tokens to the cache (those tokens are computed,
        or are computed by the step being planned: a sequence admitted later in the same step may share them, since
        each layer writes the whole step's keys before any token attends). Returns the blocks newly cached. A block
        whose hash is cached already (another sequence computed the same tokens) stays this sequence's alone."""
        if not self.prefix_caching:
            return []
        full = min(num_computed // self.block_size, len(seq.block_table))
        if full <= seq.num_cached_blocks:
            return []
        hashes = extend_block_hashes(seq, full, self.block_size)
        added = []
        for i in range(seq.num_cached_blocks, full):
            block = seq.block_table[i]
            if hashes[i] not in self._cached and self._hash_of[block] is None:
                self._cached[hashes[i]] = block
                self._hash_of[block] = hashes[i]
                added.append(block)
        seq.num_cached_blocks = full
        return added

    def forget(self, blocks: list[int]) -> None:
        """Take blocks out of the cache (a step that was to compute them failed); their holders keep them."""
        for block in blocks:
            block_hash = self._hash_of[block]
            if block_hash is not None and self._cached.get(block_hash) == block:
                del self._cached[block_hash]
            self._hash_of[block] = None
            if self._refs[block] == 0 and block in self._evictable:  # held by nobody: an ordinary free block now
                del self._evictable[block]
                self._empty.append(block)

    def trusted_prefix(self, seq: Sequence) -> int:
        """Tokens at the head of `seq` that sit in cached blocks (computed by an earlier, successful step, and
        possibly shared): a recompute starts after them, so a shared block is never written."""
        count = 0
        for block in seq.block_table:
            if self._hash_of[block] is None:
                break
            count += 1
        return min(count * self.block_size, max(0, seq.num_computed))

    # ---- holding blocks ------------------------------------------------------------------------------------
    def can_admit(self, seq: Sequence, num_tokens: int, found: list[int] | tuple[int, ...] = ()) -> bool:
        """Blocks for `num_tokens` (after the cached blocks `found`) and a table row are free (nothing is taken)."""
        revived = sum(1 for block in found if self._refs[block] == 0)  # cached but free: taking them uses free room
        missing = self.blocks_needed(num_tokens) - len(seq.block_table) - len(found)
        return missing + revived <= self.num_free and bool(seq.table_row or self._free_rows)

    def _take_free_block(self) -> int:
        if self._empty:
            block = self._empty.pop()
        else:  # evict the least recently freed cached block
            block, _ = self._evictable.popitem(last=False)
            del self._cached[cast(bytes, self._hash_of[block])]  # an evictable block is a cached one: it has a hash
            self._hash_of[block] = None
        self._refs[block] = 1
        return block

    def ensure_capacity(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow `seq`'s blocks to hold `num_tokens`; False (nothing taken) if too few blocks or rows are free."""
        missing = self.blocks_needed(num_tokens) - len(seq.block_table)
        if missing <= 0:
            return True
        if missing > self.num_free or not (seq.table_row or self._free_rows):
            return False
        if not seq.table_row:
            seq.table_row = self._free_rows.pop()
        column = len(seq.block_table)
        for _ in range(missing):
            block = self._take_free_block()
            seq.block_table.append(block)
            self._pending += (seq.table_row, column, block)
            column += 1
        return True

    def release(self, seq: Sequence) -> None:
        """Drop `seq`'s hold on its blocks and free its row (finished, aborted or preempted), offering its computed
        full blocks to the cache first. Its stale table entries are never read: the kernels read a row only up to
        the context of the sequence that holds it."""
        self.cache_computed(seq, seq.num_computed)
        # Its last blocks are freed first, so they are evicted before its first ones (shared prefixes live longer).
        for block in reversed(seq.block_table):
            self._refs[block] -= 1
            if self._refs[block] > 0:
                continue
            if self._hash_of[block] is not None:
                self._evictable[block] = None
            else:
                self._empty.append(block)
        seq.block_table.clear()
        seq.num_cached_blocks = 0
        if seq.table_row:
            self._free_rows.append(seq.table_row)
            seq.table_row = 0

    def sync(self) -> None:
        """Write the queued table entries to the device: one copy and one scatter per step, whatever the batch."""
        if not self._pending:
            return
        entries = staging_for(self.device).to_device(self._pending, torch.int32).view(-1, 3)
        self._pending = []
        rows, columns = entries[:, 0].long(), entries[:, 1].long()
        self.tables[rows, columns] = entries[:, 2]

    def slot(self, seq: Sequence, position: int) -> int:
        return seq.block_table[position // self.block_size] * self.block_size + position % self.block_size
