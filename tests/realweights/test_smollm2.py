"""SmolLM2-135M-Instruct, real weights from a GGUF file, on the CPU: the pt engine against transformers, the chat
template, stop strings, streaming, and `swiftops deploy` answering the openai client."""
from __future__ import annotations

import pytest
import torch

from swiftops import InferRequest, RequestConfig

pytestmark = pytest.mark.realweights

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
PROMPTS = [
    CAPITAL,
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "Name three primary colours."}],
    [{"role": "user", "content": "How many legs does a spider have?"}, {"role": "assistant", "content": "Eight."},
     {"role": "user", "content": "And an insect?"}],
]
MAX_TOKENS = 24


def _answer(engine, messages, **config) -> object:
    (response,) = engine.infer([InferRequest(messages=messages)], RequestConfig(temperature=0, **config))
    return response.choices[0]


def test_capital_of_france_is_paris(smollm2_engine):
    choice = _answer(smollm2_engine, CAPITAL, max_tokens=MAX_TOKENS)
    assert choice.message.content == "The capital of France is Paris."
    assert choice.finish_reason == "stop"  # ended by <|im_end|>, the GGUF's end-of-turn token


def test_greedy_output_equals_transformers_generate(smollm2_engine, transformers_reference):
    """Batched through the paged KV cache (prompts of different lengths at once) versus one `generate` each."""
    tokenizer = smollm2_engine.tokenizer
    responses = smollm2_engine.infer([InferRequest(messages=m) for m in PROMPTS],
                                     RequestConfig(temperature=0, max_tokens=MAX_TOKENS))
    for messages, response in zip(PROMPTS, responses):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        with torch.no_grad():
            out = transformers_reference.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                                  max_new_tokens=MAX_TOKENS,
                                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
        expected = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert response.choices[0].message.content == expected, messages
        assert response.usage.prompt_tokens == ids.shape[1]


def test_chat_template_round_trips(smollm2_engine):
    """The GGUF's chat template (from its metadata) renders the prompt, and its tokens decode back to that text."""
    tokenizer = smollm2_engine.tokenizer
    messages = PROMPTS[2]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nHow many legs does a spider have?<|im_end|>\n<|im_start|>"
                    "assistant\nEight.<|im_end|>\n<|im_start|>user\nAnd an insect?<|im_end|>\n<|im_start|>assistant\n")
    ids = smollm2_engine.encode(InferRequest(messages=messages))
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.convert_ids_to_tokens(ids[:1]) == ["<|im_start|>"]  # special tokens stay single tokens


def test_stop_strings_cut_real_text_across_tokens(smollm2_engine):
    # the whole answer is "The capital of France is Paris." (test_capital_of_france_is_paris)
    choice = _answer(smollm2_engine, CAPITAL, max_tokens=MAX_TOKENS, stop=["is Par"])  # spans " is" and " Paris"
    assert choice.message.content == "The capital of France " and choice.finish_reason == "stop"
    choice = _answer(smollm2_engine, CAPITAL, max_tokens=MAX_TOKENS, stop=["France"])
    assert choice.message.content == "The capital of " and choice.finish_reason == "stop"


def test_streaming_real_text_equals_the_whole_answer(smollm2_engine):
    (stream,) = smollm2_engine.infer([InferRequest(messages=CAPITAL)],
                                     RequestConfig(temperature=0, max_tokens=MAX_TOKENS, stream=True))
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert "".join(pieces) == "The capital of France is Paris."
    assert len([p for p in pieces if p]) >= 5  # token by token, not one lump


def test_deploy_answers_the_openai_client(smollm2_server_starting):
    """`swiftops deploy --model FILE.gguf` in a child process, asked by the official openai client."""
    from openai import OpenAI

    server = smollm2_server_starting.ready()
    client = OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=120)
    assert [m.id for m in client.models.list().data][:1] == [smollm2_server_starting.served_name]
    completion = client.chat.completions.create(model=smollm2_server_starting.served_name, messages=CAPITAL,
                                                temperature=0, max_tokens=MAX_TOKENS)
    assert "Paris" in completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(model=smollm2_server_starting.served_name, messages=CAPITAL,
                                            temperature=0, max_tokens=MAX_TOKENS, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == completion.choices[0].message.content
