"""Sequence.ids_between: any span of prompt + output, as the runner packs prefill chunks and decode rows."""
from __future__ import annotations

from swiftops.engines.pt.sequence import SamplingParams, Sequence


def test_ids_between_equals_slicing_the_whole_sequence():
    seq = Sequence(prompt_ids=[11, 12, 13, 14], params=SamplingParams(max_tokens=4), sink=lambda out: None)
    seq.output_ids += [15, 16, 17]
    whole = seq.prompt_ids + seq.output_ids
    for start in range(len(whole) + 1):
        for end in range(start, len(whole) + 1):
            assert seq.ids_between(start, end) == whole[start:end], (start, end)
