"""Structured outputs on the pt engine (xgrammar), on a tiny random model: the hardest case, since without the
constraint it never produces JSON. Sampled at temperature 1, every output must still end with "stop" and match."""
from __future__ import annotations

import asyncio
import json
import re

import jsonschema
import pytest
import torch

from benchmarks.structured_output import RESPONSE_FORMAT, SCHEMA
from swiftops import InferRequest, PtEngine, RequestConfig
from swiftops.engines.pt.detokenizer import IncrementalDetokenizer
from swiftops.engines.pt.guided_decoding import (
    GrammarCompiler,
    TokenRows,
    constrain,
    fill_mask,
    fill_mask_async,
    take_ahead,
)
from swiftops.engines.pt.post_step import PostStep
from swiftops.engines.pt.sequence import SamplingParams, Sequence
from swiftops.protocol import BadRequestError
from swiftops.protocol.structured_output import OutputConstraint

# Issue 20's schema (a nested object, an array with maxItems, an enum and a string with maxLength): the one the
# overhead benchmark times.
PET_SCHEMA, PET_FORMAT = SCHEMA, RESPONSE_FORMAT
REQUEST = InferRequest(messages=[{"role": "user", "content": "Describe a pet as JSON."}])
SAMPLED = RequestConfig(max_tokens=160, temperature=1.0)


def _text(response) -> str:
    return response.choices[0].message.content


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    # 1,024 positions (the tiny model has 512; RoPE runs past them): room after the tool test's ~470-token prompt.
    eng = PtEngine(str(tiny_model_dir), max_batch_size=100, max_model_len=1024)
    yield eng
    eng.close()


def test_100_sampled_completions_match_the_json_schema(engine):
    free = engine.infer([REQUEST] * 5, SAMPLED, use_tqdm=False)
    assert not any(_is_json(_text(r)) for r in free)  # the random model does not write JSON by itself
    compiles = engine._grammars.compiles
    responses = engine.infer([REQUEST] * 100, SAMPLED.model_copy(update={"response_format": PET_FORMAT}),
                             use_tqdm=False)
    assert engine._grammars.compiles == compiles + 1  # one compile for 100 requests with the same schema
    assert [r.choices[0].finish_reason for r in responses] == ["stop"] * 100
    values = [json.loads(_text(r)) for r in responses]
    for value in values:
        jsonschema.validate(value, PET_SCHEMA)
    assert list(values[0]) == list(PET_SCHEMA["properties"])  # properties in the schema's order
    assert len({json.dumps(v) for v in values}) > 90  # sampled, not one answer repeated
    assert {v["kind"] for v in values} == {"cat", "dog", "bird"}
    assert all(r.usage.completion_tokens < SAMPLED.max_tokens for r in responses)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def test_regex_and_choice(engine):
    prompts = [InferRequest(messages=[{"role": "user", "content": f"Give code number {i}."}]) for i in range(40)]
    pattern = r"[a-z]{2,5}-[0-9]{2,4}( [A-Z]{2})?"
    responses = engine.infer(prompts, SAMPLED.model_copy(update={"guided_regex": pattern}), use_tqdm=False)
    assert [r.choices[0].finish_reason for r in responses] == ["stop"] * 40
    assert all(re.fullmatch(pattern, _text(r)) for r in responses), [_text(r) for r in responses]
    assert len({_text(r) for r in responses}) > 10

    choices = ["yes", "no (maybe)", "a.b|c*", "[x]"]  # regex metacharacters in the choices are literal
    responses = engine.infer(prompts, SAMPLED.model_copy(update={"guided_choice": choices}), use_tqdm=False)
    assert [r.choices[0].finish_reason for r in responses] == ["stop"] * 40
    assert {_text(r) for r in responses} <= set(choices)
    assert len({_text(r) for r in responses}) > 1


def test_ebnf_grammar_and_json_object(engine):
    grammar = 'root ::= "sum(" num ("," num){0,3} ")"\nnum ::= [1-9] [0-9]{0,2}'
    responses = engine.infer([REQUEST] * 20, SAMPLED.model_copy(update={"guided_grammar": grammar}), use_tqdm=False)
    assert all(re.fullmatch(r"sum\([1-9][0-9]{0,2}(,[1-9][0-9]{0,2}){0,3}\)", _text(r)) for r in responses)
    assert {r.choices[0].finish_reason for r in responses} == {"stop"}

    # json_object: any JSON object. Unbounded strings may run to max_tokens; those that stop are whole objects.
    responses = engine.infer([REQUEST] * 20, SAMPLED.model_copy(update={"response_format": {"type": "json_object"}}),
                             use_tqdm=False)
    stopped = [r for r in responses if r.choices[0].finish_reason == "stop"]
    assert stopped and all(isinstance(json.loads(_text(r)), dict) for r in stopped)
    assert all(_text(r).startswith("{") for r in responses)


def test_constrained_and_free_requests_share_one_batch(engine):
    greedy = RequestConfig(max_tokens=24, temperature=0, ignore_eos=True)
    constrained = SAMPLED.model_copy(update={"response_format": PET_FORMAT, "seed": 7})
    free = [(InferRequest(messages=[{"role": "user", "content": f"question {i}"}]), greedy) for i in range(3)]
    json_jobs = [(InferRequest(messages=[{"role": "user", "content": f"pet {i}"}]), constrained) for i in range(3)]

    def run(jobs):
        async def gather():
            return await asyncio.gather(*[engine.infer_async(r, c) for r, c in jobs])
        before = engine._core.steps
        responses = asyncio.run_coroutine_threadsafe(gather(), engine._loop().loop).result()
        return responses, engine._core.steps - before

    free_alone, free_steps = run(free)
    json_alone, json_steps = run(json_jobs)
    mixed, mixed_steps = run([job for pair in zip(free, json_jobs) for job in pair])
    # Free rows are untouched by their constrained neighbours (greedy: the same tokens); constrained rows match,
    # and (seeded) are the same as alone.
    assert [_text(r) for r in mixed[0::2]] == [_text(r) for r in free_alone]
    assert [_text(r) for r in mixed[1::2]] == [_text(r) for r in json_alone]
    for response in mixed[1::2]:
        assert response.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(_text(response)), PET_SCHEMA)
    # One batch: the mix takes about as many steps as its longest member, not the sum of both kinds'.
    assert mixed_steps <= max(free_steps, json_steps) + 2 < free_steps + json_steps


def test_pipelined_decode_samples_constrained_rows_after_their_last_token(engine):
    """In steady decode, step N+1 is launched before step N's tokens reach the host; a constrained row's mask needs
    token N, so its sampling waits for it. Greedy output is the same pipelined (a batch) and not (alone)."""
    config = RequestConfig(max_tokens=160, temperature=0, response_format=PET_FORMAT)
    prompts = [InferRequest(messages=[{"role": "user", "content": f"pet number {i}"}]) for i in range(4)]
    before = engine._core.pipelined_steps
    batched = engine.infer(prompts, config, use_tqdm=False)
    assert engine._core.pipelined_steps > before
    for prompt, response in zip(prompts, batched):
        assert _text(engine.infer([prompt], config, use_tqdm=False)[0]) == _text(response)
        jsonschema.validate(json.loads(_text(response)), PET_SCHEMA)


def test_n_choices_streaming_and_ignore_eos(engine):
    config = SAMPLED.model_copy(update={"response_format": PET_FORMAT, "n": 4, "ignore_eos": True})
    response = engine.infer([REQUEST], config)[0]
    assert len(response.choices) == 4
    for choice in response.choices:  # the grammar's end stops the sequence, even with ignore_eos
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), PET_SCHEMA)
    chunks = list(engine.infer([REQUEST], SAMPLED.model_copy(update={"response_format": PET_FORMAT,
                                                                     "stream": True}))[0])
    assert chunks[-1].choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads("".join(c.choices[0].delta.content or "" for c in chunks)), PET_SCHEMA)


def test_max_tokens_cuts_the_output_with_length(engine):
    response = engine.infer([REQUEST], SAMPLED.model_copy(update={"response_format": PET_FORMAT, "max_tokens": 5}))[0]
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 5 and _text(response).startswith('{"name')


def test_forced_tool_call_follows_the_tool_schema(engine):
    weather = {"type": "function", "function": {"name": "weather", "strict": True, "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 4},
                                         "unit": {"enum": ["c", "f"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
    # strict (OpenAI's per-function flag): no undeclared properties, though the schema does not forbid them
    clock = {"type": "function", "function": {"name": "clock", "strict": True, "parameters": {
        "type": "object", "properties": {"zone": {"enum": ["utc", "cet"]}}, "required": ["zone"]}}}
    hi = [{"role": "user", "content": "hi"}]
    named = InferRequest(messages=hi, tools=[weather, clock],
                         tool_choice={"type": "function", "function": {"name": "weather"}})
    for response in engine.infer([named] * 10, SAMPLED, use_tqdm=False):
        assert response.choices[0].finish_reason == "tool_calls"
        (call,) = response.choices[0].message.tool_calls
        assert call.function.name == "weather"
        jsonschema.validate(json.loads(call.function.arguments), weather["function"]["parameters"])
    required = [InferRequest(messages=[{"role": "user", "content": f"call {i}"}], tools=[weather, clock],
                             tool_choice="required") for i in range(20)]
    names = set()
    for response in engine.infer(required, SAMPLED, use_tqdm=False):
        assert response.choices[0].finish_reason == "tool_calls"
        (call,) = response.choices[0].message.tool_calls
        names.add(call.function.name)
        tool = weather if call.function.name == "weather" else clock
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, tool["function"]["parameters"])
        assert set(arguments) == set(tool["function"]["parameters"]["properties"])
    assert names <= {"weather", "clock"}


def test_a_schema_that_cannot_compile_is_refused_before_queueing(engine):
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}}
    compiles = engine._grammars.compiles
    for _ in range(2):  # not cached as a failure that hides the reason, nor as a success
        with pytest.raises(BadRequestError, match=r"response_format cannot be compiled into a grammar: .*missing"):
            engine.infer([REQUEST], RequestConfig(response_format=bad))
    assert engine._grammars.compiles == compiles + 2
    assert engine.num_waiting == engine.num_running == 0
    with pytest.raises(BadRequestError, match=r"guided_regex cannot be compiled into a grammar: .*\["):
        engine.infer([REQUEST], RequestConfig(guided_regex="[a-"))
    with pytest.raises(BadRequestError, match="num_beams 1"):
        engine.infer([REQUEST], RequestConfig(guided_choice=["a"], num_beams=2))
    assert _text(engine.infer([REQUEST], RequestConfig(max_tokens=4, guided_choice=["ok"]))[0]) == "ok"  # still serves


def test_padded_vocabulary_ids_are_never_allowed(tiny_model_dir):
    """An lm_head wider than the tokenizer (padded for the GPU): the bitmask covers every logit, and the ids past the
    tokenizer's vocabulary are masked in constrained rows; free rows of the same batch are untouched."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    vocab = len(tokenizer) + 45
    compiler = GrammarCompiler(tokenizer, vocab, {tokenizer.eos_token_id})
    constraint = OutputConstraint("choice", json.dumps(["yes", "no"]), param="guided_choice")
    grammar = compiler.matcher(compiler.compile_sync(constraint), constraint)
    params = SamplingParams(max_tokens=4)
    seqs = [Sequence([1], params, print), Sequence([1], params, print, grammar=grammar)]
    logits = torch.zeros(2, vocab)
    constrain(logits, seqs)
    assert torch.equal(logits[0], torch.zeros(vocab))
    allowed = set(torch.nonzero(logits[1] == 0).flatten().tolist())
    assert allowed and max(allowed) < len(tokenizer)
    assert all(tokenizer.decode([t]) and ("yes".startswith(tokenizer.decode([t])) or
                                          "no".startswith(tokenizer.decode([t]))) for t in allowed)
    compiler.close()


def test_tokens_taken_ahead_are_not_taken_twice_and_a_rejected_one_is_reported(tiny_model_dir):
    """Pipelined decode hands the matchers their tokens before the post-step (`take_ahead`), so the next mask can be
    filled beside it; the post-step then takes nothing twice. A token the grammar rejects leaves the matcher as it
    was, makes take_ahead say so, and the post-step reports it as that sequence's error."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    compiler = GrammarCompiler(tokenizer, len(tokenizer), {tokenizer.eos_token_id})
    constraint = OutputConstraint("choice", json.dumps(["yes", "no"]), param="guided_choice")
    compiled = compiler.compile_sync(constraint)
    params = SamplingParams(max_tokens=4)
    good, bad = (Sequence([1], params, print, grammar=compiler.matcher(compiled, constraint)) for _ in range(2))
    for seq in (good, bad):
        seq.detokenizer = IncrementalDetokenizer(tokenizer, seq.prompt_ids, params.stop)
    first = tokenizer.encode("yes")[0]
    mask = fill_mask([good, bad], len(tokenizer), pin=False)
    assert mask is not None and mask.rows == [0, 1] and mask.words[0, first // 32] >> (first % 32) & 1
    rejected = tokenizer.encode("zebra")[0]
    assert take_ahead([good, bad], [first, rejected]) is False
    assert (good.grammar.accepted, bad.grammar.accepted) == (1, 0)
    post = PostStep({tokenizer.eos_token_id}, max_model_len=64)
    assert post.append(good, first, None).finish_reason is None and good.grammar.accepted == 1
    failed = post.append(bad, rejected, None)
    assert failed.finish_reason == "error" and "rejected the sampled token" in str(failed.error)
    compiler.close()


def test_each_engine_fills_masks_with_its_own_worker_and_closing_one_leaves_the_other(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    first, second = (GrammarCompiler(tokenizer, len(tokenizer), {tokenizer.eos_token_id}) for _ in range(2))
    constraint = OutputConstraint("choice", json.dumps(["yes", "no"]), param="guided_choice")
    params = SamplingParams(max_tokens=4)

    def batch(compiler):
        compiled = compiler.compile_sync(constraint)
        return [Sequence([1], params, print, grammar=compiler.matcher(compiled, constraint)) for _ in range(3)]

    ours, theirs = batch(first), batch(second)
    assert ours[0].grammar.filler is first.filler and theirs[0].grammar.filler is second.filler
    assert first.filler is not second.filler
    want = fill_mask(theirs, len(tokenizer), pin=False).words
    first.close()
    filled = fill_mask_async(theirs, len(tokenizer), pin=False).result(timeout=30)  # the other's worker still runs
    assert filled.rows == [0, 1, 2] and torch.equal(filled.words, want)
    second.close()


def test_token_rows_forbid_surrogates_and_control_characters_in_json():
    """The sets ANDed into constrained rows: no surrogate bytes (ED A0-BF) inside a token, none across two (after a
    token ending in ED, no token may start with A0-BF), no control characters in JSON; EOS stays the grammar's."""
    vocab = [b"a", b"\xed", b"\xed\xa0\x80", b"\x01", b"\xa5x", b"<eos>"]
    rows = TokenRows(vocab, len(vocab), stop_token_ids=[5])

    def allowed(kind: int) -> set[int]:
        word = int(rows.table[kind, 0])
        return {i for i in range(len(vocab)) if word >> i & 1}

    assert allowed(TokenRows.kind(json_output=False, after_ed=False)) == {0, 1, 3, 4, 5}
    assert allowed(TokenRows.kind(json_output=False, after_ed=True)) == {0, 1, 3, 5}
    assert allowed(TokenRows.kind(json_output=True, after_ed=False)) == {0, 1, 4, 5}
    assert allowed(TokenRows.kind(json_output=True, after_ed=True)) == {0, 1, 5}
    assert allowed(rows.free_kind) == set(range(len(vocab)))
    assert rows.ends_with_ed == {1}


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_penalty_too_small_for_float32_keeps_the_grammar(engine, temperature):
    # Found by the OpenAPI fuzzer: repetition_penalty 5e-324 is 0 in float32; applied after the mask, -inf * 0 was
    # NaN, argmax took a masked token and the request failed with a 500. The mask is now the last word.
    config = RequestConfig(max_tokens=8, temperature=temperature, guided_choice=["0", "yes"],
                           repetition_penalty=5e-324)
    responses = engine.infer([REQUEST] * 4, config, use_tqdm=False)
    assert [r.choices[0].finish_reason for r in responses] == ["stop"] * 4
    assert {_text(r) for r in responses} <= {"0", "yes"}
    free = engine.infer([REQUEST] * 2, RequestConfig(max_tokens=6, temperature=temperature, ignore_eos=True,
                                                     repetition_penalty=5e-324), use_tqdm=False)
    assert all(r.usage.completion_tokens == 6 for r in free)  # a sampled row stays a distribution: no NaN
