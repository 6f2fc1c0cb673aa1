"""The prefix cache's bookkeeping on its own: the hash chain, reference counts, LRU eviction, and the scheduler
admitting a sequence with its cached prefix."""
from __future__ import annotations

import torch

from swiftops.engines.pt.block_manager import BlockManager
from swiftops.engines.pt.prefix_hash import extend_block_hashes
from swiftops.engines.pt.scheduler import Scheduler
from swiftops.engines.pt.sequence import SamplingParams, Sequence

BS = 4


def _seq(ids: list[int], salt: bytes = b"", media=None) -> Sequence:
    return Sequence(prompt_ids=list(ids), params=SamplingParams(max_tokens=8), sink=print, cache_salt=salt,
                    media_key=media)


def _blocks(num_blocks: int = 17, max_seqs: int = 4) -> BlockManager:
    return BlockManager(num_blocks, BS, max_seqs, 64, torch.device("cpu"), prefix_caching=True)


def _compute(blocks: BlockManager, seq: Sequence) -> None:
    """Admit `seq` with its cached prefix and 'compute' the rest, as the scheduler and the post-step stage do."""
    seq.num_computed = blocks.take_prefix(seq, blocks.cached_prefix(seq))
    assert blocks.ensure_capacity(seq, seq.num_tokens)
    blocks.cache_computed(seq, seq.num_tokens)
    seq.num_computed = seq.num_tokens


def test_hash_chain_depends_on_every_earlier_token_and_on_the_salt():
    base = list(range(1, 13))  # three full blocks
    h = extend_block_hashes(_seq(base), 3, BS)
    assert len(set(h)) == 3
    changed_first = extend_block_hashes(_seq([99] + base[1:]), 3, BS)
    assert all(a != b for a, b in zip(h, changed_first))  # a change in block 0 changes every later block's hash
    changed_last = extend_block_hashes(_seq(base[:-1] + [99]), 3, BS)
    assert changed_last[:2] == h[:2] and changed_last[2] != h[2]
    assert all(a != b for a, b in zip(h, extend_block_hashes(_seq(base, salt=b"lora-a"), 3, BS)))
    # media: blocks before the first media token are shared with the text-only prompt, later ones are not
    with_image = extend_block_hashes(_seq(base, media=(5, b"pixels")), 3, BS)
    assert with_image[0] == h[0] and with_image[1] != h[1] and with_image[2] != h[2]
    other_image = extend_block_hashes(_seq(base, media=(5, b"other")), 3, BS)
    assert other_image[0] == h[0] and other_image[1] != with_image[1]


def test_longest_prefix_is_shared_and_the_last_token_is_always_computed():
    blocks = _blocks()
    first = _seq(range(1, 11))  # 10 tokens: 2 full blocks + 2
    _compute(blocks, first)
    assert blocks.num_cached == 2
    same = _seq(range(1, 11))
    found = blocks.cached_prefix(same)
    assert found == first.block_table[:2]
    longer = _seq(list(range(1, 9)) + [50, 51, 52, 53, 54])  # shares 2 blocks, then differs
    assert blocks.cached_prefix(longer) == first.block_table[:2]
    exact = _seq(range(1, 9))  # 8 tokens = exactly the 2 cached blocks: the second one is recomputed
    assert blocks.cached_prefix(exact) == first.block_table[:1]
    assert blocks.cached_prefix(_seq([7] + list(range(2, 11)))) == []
    same.num_computed = blocks.take_prefix(same, found)
    assert same.num_computed == 8 and same.num_pending == 2 and same.block_table == found
    assert (blocks.queries, blocks.hits) == (10 + 10, 8)


def test_refcounts_keep_shared_blocks_and_lru_evicts_least_recently_freed_first():
    blocks = _blocks(num_blocks=9)  # 8 usable blocks
    a = _seq(range(1, 10))  # 9 tokens: 3 blocks, 2 full
    _compute(blocks, a)
    b = _seq(range(1, 10))
    _compute(blocks, b)
    assert b.block_table[:2] == a.block_table[:2] and b.block_table[2] != a.block_table[2]
    shared = a.block_table[:2]
    blocks.release(a)
    assert blocks.cached_prefix(_seq(range(1, 10))) == shared  # still cached, and held by b
    free_before = blocks.num_free
    blocks.release(b)
    assert blocks.num_free == free_before + 3  # the 2 shared blocks, once nobody holds them, and b's own one
    # Nobody holds them now, but they stay cached until the space is needed.
    assert blocks.cached_prefix(_seq(range(1, 10))) == shared
    c = _seq(range(100, 109))  # 2 full blocks + 1, taken from never-cached blocks first
    _compute(blocks, c)
    assert not set(c.block_table) & set(shared)
    blocks.release(c)
    assert blocks.num_free == 8 and blocks.num_cached == 4
    d = _seq(range(200, 224))  # 6 blocks: the 4 never-cached ones, then the 2 least recently freed cached ones
    _compute(blocks, d)
    assert set(d.block_table) & set(shared) == set(shared)
    assert blocks.cached_prefix(_seq(range(1, 10))) == []  # a's prefix was evicted...
    assert len(blocks.cached_prefix(_seq(range(100, 109)))) == 2  # ...c's, freed later, is still there


def test_a_block_in_use_is_never_evicted_or_handed_out():
    blocks = _blocks(num_blocks=7)  # 6 usable blocks
    holder = _seq(range(1, 10))  # 3 blocks held
    _compute(blocks, holder)
    held = set(holder.block_table)
    others = []
    for start in (100, 200, 300):  # churn through the rest of the cache many times
        seq = _seq(range(start, start + 12))
        _compute(blocks, seq)
        assert not set(seq.block_table) & held
        others.append(seq)
        blocks.release(seq)
    big = _seq(range(500, 517))  # needs 5 blocks, only 3 are not held: refused, nothing taken
    assert not blocks.can_admit(big, big.num_tokens)
    assert not blocks.ensure_capacity(big, big.num_tokens) and big.block_table == []
    assert blocks.cached_prefix(_seq(range(1, 10))) == holder.block_table[:2]


def test_forgotten_blocks_are_not_found_and_recompute_starts_after_the_trusted_prefix():
    blocks = _blocks()
    a = _seq(range(1, 14))  # 13 tokens: 3 full blocks
    _compute(blocks, a)
    b = _seq(range(1, 14))
    b.num_computed = blocks.take_prefix(b, blocks.cached_prefix(b))
    assert b.num_computed == 12 and blocks.trusted_prefix(b) == 12
    blocks.forget(a.block_table[1:3])  # as if the step computing them had failed
    assert blocks.cached_prefix(_seq(range(1, 14))) == a.block_table[:1]
    assert blocks.trusted_prefix(b) == 4


def test_off_means_no_lookups_no_counts():
    blocks = BlockManager(17, BS, 4, 64, torch.device("cpu"), prefix_caching=False)
    a = _seq(range(1, 10))
    _compute(blocks, a)
    blocks.release(a)
    b = _seq(range(1, 10))
    assert blocks.cached_prefix(b) == [] and blocks.take_prefix(b, []) == 0
    assert (blocks.queries, blocks.hits, blocks.num_cached) == (0, 0, 0)


def test_scheduler_admits_with_the_cached_prefix_and_siblings_share_in_the_same_step():
    blocks = _blocks()
    sched = Scheduler(blocks, max_num_seqs=4, max_num_batched_tokens=64)
    first, second = _seq(range(1, 11)), _seq(range(1, 11))  # an n = 2 request: both arrive together
    sched.add(first)
    sched.add(second)
    plan = sched.schedule()
    assert plan.prefill == [(first, 10), (second, 2)]  # the second computes only its last partial block
    assert second.block_table[:2] == first.block_table[:2] and second.num_computed == 8
    assert len(plan.cached) == 2
    sched.forget_cached(plan)  # the step failed: nothing it computed is trusted
    assert blocks.cached_prefix(_seq(range(1, 11))) == []


def test_media_key_is_the_first_media_position_and_a_digest_of_the_pixels():
    from swiftops.engines.pt.prefix_hash import media_key

    def inputs(pixels: float, text_after: int):
        types = torch.tensor([[0] * 5 + [1] * 4 + [0] * text_after])
        return {"input_ids": torch.arange(types.shape[1])[None], "attention_mask": torch.ones_like(types),
                "mm_token_type_ids": types, "pixel_values": torch.full((4, 6), pixels),
                "image_grid_thw": torch.tensor([[1, 2, 2]])}

    first, digest = media_key(inputs(0.5, 3))
    assert first == 5
    assert media_key(inputs(0.5, 30)) == (5, digest)  # the same image, a longer question: the same key
    assert media_key(inputs(0.25, 3))[1] != digest
    assert media_key({"input_ids": torch.ones(1, 3), "attention_mask": torch.ones(1, 3)}) is None
