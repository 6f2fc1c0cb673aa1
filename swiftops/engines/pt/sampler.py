"""Token sampling for one step of a batch, vectorised over its rows.

Penalties, temperature, top-k, top-p and min-p are tensors over the batch: one set of kernels per step whatever
the mix of settings, never a loop over rows. Sampling draws with the exponential race (argmax of p / q with
q ~ Exp(1), the same distribution as multinomial): a seeded request draws its q from its own generator over the
whole vocabulary, so its tokens do not depend on its batch neighbours.

Logprobs are the model's own distribution (log-softmax of the raw logits, before penalties and temperature), as
vLLM and OpenAI report them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from swiftops.engines.pt.guided_decoding import HostMask, constrain
from swiftops.engines.pt.host_staging import Download, staging_for
from swiftops.engines.pt.sequence import Sequence

# Top-k up to this many takes torch.topk over each row; beyond it (or top-p / min-p without top-k) a full sort.
_TOPK_FAST = 1024


@dataclass
class SampleResult:
    token_ids: list[int]
    # per row: (chosen logprob, [(token_id, logprob), ...] top alternatives) or None when not asked
    logprobs: list[tuple[float, list[tuple[int, float]]] | None]


def _padded(rows: list[list[int]], pad: int, device: torch.device) -> torch.Tensor:
    """Token-id lists as one [R, L] tensor, padded with `pad` (an extra column the callers drop)."""
    width = max(1, max(len(r) for r in rows))
    return staging_for(device).to_device([r + [pad] * (width - len(r)) for r in rows])


# Penalized logits are clipped to this magnitude: far beyond any model's logits, and finite after a division by
# the smallest temperature.
_LOGIT_BOUND = 1e4


def _apply_penalties(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    """Repetition penalty over prompt and output (transformers' and vLLM's rule), presence and frequency penalties
    over the output (OpenAI's), for the penalized rows of the batch at once."""
    rows = [i for i, s in enumerate(seqs) if s.params.penalized]
    upload = staging_for(logits.device).to_device
    index = upload(rows)
    sub = logits[index]
    vocab = logits.shape[1]
    params = [seqs[i].params for i in rows]
    if any(p.repetition_penalty != 1.0 for p in params):
        ids = _padded([seqs[i].all_ids for i in rows], vocab, logits.device)
        seen = torch.zeros(len(rows), vocab + 1, dtype=torch.bool, device=logits.device)
        seen.scatter_(1, ids, True)
        seen = seen[:, :vocab]
        penalty = upload([p.repetition_penalty for p in params], torch.float32)[:, None]
        # A penalty too small for float32 (5e-324 is valid JSON and > 0) would be 0: x / 0 = inf, and softmax
        # over inf is NaN. Kept normal, and the scaled logits bounded, every row stays a distribution.
        penalty = penalty.clamp_min(torch.finfo(torch.float32).tiny)
        scaled = torch.where(sub > 0, sub / penalty, sub * penalty).clamp(-_LOGIT_BOUND, _LOGIT_BOUND)
        sub = torch.where(seen, scaled, sub)
    if any(p.presence_penalty or p.frequency_penalty for p in params):
        ids = _padded([seqs[i].output_ids for i in rows], vocab, logits.device)
        counts = torch.zeros(len(rows), vocab + 1, dtype=sub.dtype, device=logits.device)
        counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=sub.dtype))
        counts = counts[:, :vocab]
        frequency = upload([p.frequency_penalty for p in params], torch.float32)[:, None]
        presence = upload([p.presence_penalty for p in params], torch.float32)[:, None]
        sub = sub - frequency * counts - presence * (counts > 0).to(sub.dtype)
    logits[index] = sub


def _apply_logit_bias(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    """OpenAI's logit_bias: each row's biases added to its tokens' logits, for the whole batch in one kernel."""
    rows = [i for i, s in enumerate(seqs) for _ in s.params.logit_bias]
    ids = [token_id for s in seqs for token_id, _ in s.params.logit_bias]
    biases = [bias for s in seqs for _, bias in s.params.logit_bias]
    upload = staging_for(logits.device).to_device
    logits.index_put_((upload(rows), upload(ids)), upload(biases, logits.dtype), accumulate=True)


def _filter(logits: torch.Tensor, top_k: list[int], top_p: list[float], min_p: list[float]) -> torch.Tensor:
    """logits [R, V] with the tokens outside each row's top-k / top-p / min-p set to -inf."""
    vocab = logits.shape[1]
    device = logits.device
    k = [t if 0 < t < vocab else vocab for t in top_k]
    limited = [t for t in k if t < vocab]
    if limited:
        # Threshold of each row's k-th largest logit (rows without top-k keep every token).
        width = max(limited)
        top = (
            torch.topk(logits, width, dim=-1).values
            if width <= _TOPK_FAST
            else torch.sort(logits, dim=-1, descending=True).values[:, :width]
        )
        upload = staging_for(device).to_device
        kth = top.gather(1, upload([[min(t, width) - 1] for t in k]))
        kth = torch.where(upload([[t >= vocab] for t in k], torch.bool), float("-inf"), kth)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if min(top_p) < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop tokens once the mass before them already reaches top_p (the first token always stays). A row with
        # top_p 1 keeps every token: its float cumulative sum can round up to 1 before the last tokens.
        cut = [p if p < 1.0 else float("inf") for p in top_p]
        drop = (torch.cumsum(probs, dim=-1) - probs) >= staging_for(device).to_device(cut, torch.float32)[:, None]
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(1, order, sorted_logits)
    if max(min_p) > 0.0:
        probs = torch.softmax(logits, dim=-1)
        floor = probs.max(dim=-1, keepdim=True).values * staging_for(device).to_device(min_p, torch.float32)[:, None]
        logits = logits.masked_fill(probs < floor, float("-inf"))
    return logits


def _exponential_noise(seqs: list[Sequence], vocab: int, device: torch.device) -> torch.Tensor:
    """q ~ Exp(1) [R, V]; a seeded row draws its own from its generator, the others in one call."""
    noise = torch.empty(len(seqs), vocab, device=device).exponential_()
    for i, seq in enumerate(seqs):
        if seq.generator is not None:
            noise[i].exponential_(generator=seq.generator)
    return noise


@dataclass
class PendingSample:
    """A step's sampled tokens (and asked-for logprobs) still on the device; `collect()` brings them over."""

    chosen: torch.Tensor  # [B] token ids, on the device
    copy: Download
    logprob_rows: list[int]
    top_counts: list[int]

    def collect(self) -> SampleResult:
        values = self.copy.result()
        token_ids = values[0]
        infos: list[tuple[float, list[tuple[int, float]]] | None] = [None] * len(token_ids)
        if self.logprob_rows:
            chosen_lp = values[1]
            top_values, top_ids = (values[2], values[3]) if len(values) > 2 else ([], [])  # no top_logprobs asked
            for j, (i, n) in enumerate(zip(self.logprob_rows, self.top_counts, strict=False)):
                top = list(zip(top_ids[j][:n], top_values[j][:n], strict=False)) if n else []
                infos[i] = (chosen_lp[j], top)
        return SampleResult(token_ids, infos)


def sample_on_device(logits: torch.Tensor, seqs: list[Sequence], grammar_mask: HostMask | None = None) -> PendingSample:
    """Sample a step's tokens and queue their copy to the host; nothing here waits for the GPU. `grammar_mask`: the
    structured-output rows' masks when already filled (pipelined decode fills them beside the post-step)."""
    params = [s.params for s in seqs]
    sampled = [i for i, p in enumerate(params) if not p.greedy]
    want_logprobs = penalized = biased = False
    if sampled or not all(p.greedy and not p.logprobs and not p.penalized and not p.logit_bias for p in params):
        want_logprobs = any(p.logprobs for p in params)
        penalized = any(p.penalized for p in params)
        biased = any(p.logit_bias for p in params)
        logits = logits.float()  # greedy alone needs no float32 copy of the batch's logits
    raw_logprobs = torch.log_softmax(logits, dim=-1) if want_logprobs else None
    if penalized or biased:
        logits = logits.clone()  # the runner's logits may be a graph's output buffer: change a copy
    if penalized:
        _apply_penalties(logits, seqs)
    if biased:
        _apply_logit_bias(logits, seqs)
    # Structured output: grammar masks, all rows in one kernel. Last, so nothing after it can bring a disallowed
    # token back (a penalty's arithmetic on a masked -inf could give NaN, which argmax picks; a bias could lift it).
    if any(s.grammar is not None for s in seqs):
        constrain(logits, seqs, grammar_mask)
    chosen = torch.argmax(logits, dim=-1)
    if sampled:
        upload = staging_for(logits.device).to_device
        rows = upload(sampled)
        picked = [params[i] for i in sampled]
        temperature = upload([p.temperature for p in picked], torch.float32)[:, None]
        sub = _filter(
            logits[rows] / temperature, [p.top_k for p in picked], [p.top_p for p in picked], [p.min_p for p in picked]
        )
        probs = torch.softmax(sub, dim=-1)
        noise = _exponential_noise([seqs[i] for i in sampled], logits.shape[1], logits.device)
        chosen[rows] = torch.argmax(probs / noise, dim=-1)
    if not want_logprobs:
        return PendingSample(chosen, staging_for(logits.device).to_host(chosen), [], [])
    assert raw_logprobs is not None  # narrows for mypy: computed whenever want_logprobs
    rows_lp = [i for i, p in enumerate(params) if p.logprobs]
    counts = [params[i].top_logprobs for i in rows_lp]
    index = staging_for(logits.device).to_device(rows_lp)
    extra = [raw_logprobs[index, chosen[index]]]
    if max(counts):
        extra.extend(torch.topk(raw_logprobs[index], max(counts), dim=-1))
    return PendingSample(chosen, staging_for(logits.device).to_host(chosen, *extra), rows_lp, counts)


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> SampleResult:
    """logits: [B, V] for the rows in `seqs` (same order); waits for the tokens (the one host sync of a step)."""
    return sample_on_device(logits, seqs).collect()
