"""The batched sampler against per-row references: filters, penalties, seeds independent of batch neighbours."""
from __future__ import annotations

import torch

from swiftops.engines.pt.sampler import _apply_penalties, _filter, sample
from swiftops.engines.pt.sequence import SamplingParams, Sequence


def _seq(prompt, output=(), seed=None, **params) -> Sequence:
    seq = Sequence(prompt_ids=list(prompt), params=SamplingParams(max_tokens=8, **params), sink=lambda out: None)
    seq.output_ids = list(output)
    if seed is not None:
        seq.generator = torch.Generator().manual_seed(seed)
    return seq


def _row_filter(logits: torch.Tensor, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """One row, the textbook way."""
    logits = logits.clone()
    if 0 < top_k < logits.numel():
        logits[logits < torch.topk(logits, top_k).values[-1]] = float("-inf")
    if top_p < 1.0:
        values, order = torch.sort(logits, descending=True)
        probs = torch.softmax(values, -1)
        keep = (torch.cumsum(probs, -1) - probs) < top_p
        logits[order[~keep]] = float("-inf")
    if min_p > 0:
        probs = torch.softmax(logits, -1)
        logits[probs < min_p * probs.max()] = float("-inf")
    return logits


def test_filters_equal_the_per_row_reference_for_a_mixed_batch():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 300, generator=gen) * 3
    settings = [(0, 1.0, 0.0), (20, 1.0, 0.0), (0, 0.8, 0.0), (50, 0.9, 0.05), (0, 1.0, 0.2)]
    got = _filter(logits, [s[0] for s in settings], [s[1] for s in settings], [s[2] for s in settings])
    for row, (k, p, m) in enumerate(settings):
        assert torch.equal(torch.isinf(got[row]), torch.isinf(_row_filter(logits[row], k, p, m))), row
        kept = ~torch.isinf(got[row])
        assert torch.equal(got[row][kept], logits[row][kept])


def test_penalties_equal_the_per_row_reference():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 50, generator=gen)
    seqs = [_seq([1, 2, 2], [3, 3, 4], repetition_penalty=1.3), _seq([5], [6]),
            _seq([7, 8], [8, 9, 9, 9], presence_penalty=0.5, frequency_penalty=0.25)]
    got = logits.clone()
    _apply_penalties(got, seqs)
    want = logits.clone()
    for token in {1, 2, 3, 4}:
        value = want[0, token]
        want[0, token] = value / 1.3 if value > 0 else value * 1.3
    for token, count in ((8, 1), (9, 3)):
        want[2, token] -= 0.25 * count + 0.5
    assert torch.allclose(got, want)


def test_seeded_rows_do_not_depend_on_their_neighbours():
    logits = torch.randn(4, 200, generator=torch.Generator().manual_seed(2))
    alone = sample(logits[2:3].clone(), [_seq([1], seed=7, temperature=1.0, top_k=50)]).token_ids
    batch = [_seq([1], temperature=0.0), _seq([1], temperature=0.7, top_p=0.9),
             _seq([1], seed=7, temperature=1.0, top_k=50), _seq([1], seed=3, temperature=1.2)]
    together = sample(logits.clone(), batch)
    assert together.token_ids[2] == alone[0]
    assert together.token_ids[0] == int(logits[0].argmax())  # greedy row untouched by its sampled neighbours


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1, 1e-9]]))
    seq = _seq([1], seed=0, temperature=1.0)
    counts = torch.zeros(4)
    for _ in range(3000):
        counts[sample(logits.clone(), [seq]).token_ids[0]] += 1
    assert torch.allclose(counts / 3000, torch.tensor([0.6, 0.3, 0.1, 0.0]), atol=0.03)


def test_logprobs_are_the_raw_distribution_with_top_alternatives():
    logits = torch.randn(2, 30, generator=torch.Generator().manual_seed(3))
    seqs = [_seq([1], logprobs=True, top_logprobs=2), _seq([1], repetition_penalty=2.0)]
    result = sample(logits.clone(), seqs)
    raw = torch.log_softmax(logits[0], -1)
    chosen, top = result.logprobs[0]
    assert abs(chosen - float(raw[result.token_ids[0]])) < 1e-6
    assert [t for t, _ in top] == torch.topk(raw, 2).indices.tolist()
    assert result.logprobs[1] is None


def test_logit_bias_moves_greedy_and_sampled_rows_but_not_their_logprobs():
    logits = torch.zeros(3, 10)
    logits[:, 2] = 5.0  # every row's favourite
    seqs = [_seq([1], logit_bias=((7, 100.0),)), _seq([1], logit_bias=((2, -100.0),), logprobs=True),
            _seq([1], temperature=1.0, seed=0, logit_bias=((4, 100.0),))]
    before = logits.clone()
    result = sample(logits, seqs)
    assert result.token_ids[0] == 7 and result.token_ids[2] == 4
    assert result.token_ids[1] not in (2, 7)  # banned, and row 0's bias is not row 1's
    assert result.logprobs[1][0] == torch.log_softmax(before[1], -1)[result.token_ids[1]].item()  # the model's own
    assert torch.equal(logits, before)  # the runner's logits are left as they were
