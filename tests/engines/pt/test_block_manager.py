"""Block bookkeeping and the scheduler on their own: device tables grown by appending, preemption, admission."""
from __future__ import annotations

import torch

from swiftops.engines.pt.block_manager import BlockManager
from swiftops.engines.pt.scheduler import Scheduler
from swiftops.engines.pt.sequence import SamplingParams, Sequence


def _seq(n_prompt: int) -> Sequence:
    return Sequence(prompt_ids=list(range(1, n_prompt + 1)), params=SamplingParams(max_tokens=64), sink=print)


def test_tables_grow_by_appending_and_rows_are_recycled():
    blocks = BlockManager(num_blocks=9, block_size=4, max_seqs=2, max_model_len=32, device=torch.device("cpu"))
    a, b, c = _seq(5), _seq(3), _seq(1)
    assert blocks.ensure_capacity(a, 5) and blocks.ensure_capacity(b, 3)
    assert not blocks.ensure_capacity(c, 1)  # two rows only: the third sequence waits, nothing taken
    assert c.block_table == [] and c.table_row == 0
    assert blocks.ensure_capacity(a, 9)  # a third block for a, appended
    blocks.sync()
    assert blocks.tables[a.table_row, :3].tolist() == a.block_table and len(set(a.block_table)) == 3
    assert blocks.tables[b.table_row, :1].tolist() == b.block_table
    assert 0 not in a.block_table + b.block_table  # block 0 is the scratch block
    assert blocks.tables[0].abs().sum() == 0  # and row 0 the scratch row
    assert blocks.slot(a, 6) == a.block_table[1] * 4 + 2
    free = blocks.num_free
    row = a.table_row
    blocks.release(a)
    assert blocks.num_free == free + 3 and a.table_row == 0 and a.block_table == []
    assert blocks.ensure_capacity(c, 1) and c.table_row == row


def test_decode_out_of_blocks_preempts_the_latest_and_recomputes_it():
    blocks = BlockManager(num_blocks=5, block_size=4, max_seqs=4, max_model_len=64, device=torch.device("cpu"))
    sched = Scheduler(blocks, max_num_seqs=4, max_num_batched_tokens=64)
    first, second = _seq(4), _seq(4)
    sched.add(first)
    sched.add(second)
    plan = sched.schedule()  # both admitted: 2 blocks each... of 4 usable
    assert [s for s, _ in plan.prefill] == [first, second]
    for seq, chunk in plan.prefill:
        seq.num_computed += chunk
        seq.output_ids.append(9)
    for _ in range(8):  # both decode until the cache is full
        plan = sched.schedule()
        for seq in plan.decode:
            seq.num_computed += 1
            seq.output_ids.append(9)
        if sched.num_preemptions:
            break
    assert sched.num_preemptions == 1
    assert sched.running == [first] and list(sched.waiting) == [second]
    assert second.num_computed == 0 and second.block_table == [] and second.output_ids  # keeps its tokens


def test_admission_waits_for_room_for_the_whole_prompt():
    blocks = BlockManager(num_blocks=4, block_size=4, max_seqs=4, max_model_len=64, device=torch.device("cpu"))
    sched = Scheduler(blocks, max_num_seqs=4, max_num_batched_tokens=4)
    big, small = _seq(8), _seq(2)
    sched.add(big)
    sched.add(small)
    plan = sched.schedule()  # the budget (4 tokens) chunks big's prompt; small must wait behind it in order
    assert plan.prefill == [(big, 4)] and list(sched.waiting) == [small]
    assert len(big.block_table) == 1  # blocks are taken as the chunks need them
