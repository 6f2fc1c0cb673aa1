"""The official `openai` client against the real server: chat, streaming, completions, models, errors."""
from __future__ import annotations

import openai
import pytest

MESSAGES = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture()
def client(server, api_key):
    with openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0, timeout=60) as c:
        yield c


def test_models_lists_the_served_name_and_adapters(client, served_name, adapter_names):
    models = client.models.list()
    assert [m.id for m in models.data] == [served_name, *adapter_names]
    assert client.models.retrieve(served_name).id == served_name
    assert client.models.retrieve("sql").model_extra["parent"] == served_name


def test_the_model_field_selects_base_or_adapter(client, served_name, adapter_names):
    def answer(model: str) -> tuple[str, str]:
        r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=10, temperature=0)
        return r.model, r.choices[0].message.content

    names = [served_name, *adapter_names]
    solo = {name: answer(name) for name in names}
    assert {name: echoed for name, (echoed, _) in solo.items()} == {n: n for n in names}
    assert len({text for _, text in solo.values()}) == len(names)  # each adapter really changes the output
    streamed = client.chat.completions.create(model="poem", messages=MESSAGES, max_tokens=10, temperature=0,
                                              stream=True)
    chunks = list(streamed)
    assert {c.model for c in chunks} == {"poem"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == solo["poem"][1]
    completion = client.completions.create(model="sql", prompt="SELECT", max_tokens=4, temperature=0)
    assert completion.model == "sql"


def test_mixed_models_in_one_batch_equal_solo_answers(server, api_key, served_name, adapter_names):
    import asyncio

    models = [served_name, *adapter_names]
    prompts = ["Tell me about the sea.", "SELECT name FROM users", "写一首诗"]
    jobs = [(model, prompt) for _ in range(3) for prompt in prompts for model in models]  # a burst of 36

    async def ask(c, model: str, prompt: str) -> str:
        r = await c.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                            max_tokens=10, temperature=0)
        assert r.model == model
        return r.choices[0].message.content

    async def run() -> tuple[list[str], dict]:
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0) as c:
            burst = await asyncio.gather(*[ask(c, m, p) for m, p in jobs])
            solo = {(m, p): await ask(c, m, p) for m in models for p in prompts}  # one at a time
        return burst, solo

    burst, solo = asyncio.run(run())
    assert burst == [solo[job] for job in jobs]
    assert len({solo[(m, prompts[0])] for m in models}) == len(models)  # every adapter answers differently


def test_chat_greedy_is_deterministic_and_echoes_the_model(client, served_name):
    first = client.chat.completions.create(model=served_name, messages=MESSAGES, max_tokens=12, temperature=0)
    second = client.chat.completions.create(model=served_name, messages=MESSAGES, max_completion_tokens=12,
                                            temperature=0, seed=1, user="alice")
    assert first.model == served_name
    assert first.object == "chat.completion"
    assert first.choices[0].message.role == "assistant"
    assert first.choices[0].message.content
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.usage.completion_tokens <= 12 and first.usage.prompt_tokens > 0
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens


def test_chat_stream_matches_the_whole_answer(client, served_name):
    whole = client.chat.completions.create(model=served_name, messages=MESSAGES, max_tokens=16, temperature=0)
    chunks = list(client.chat.completions.create(model=served_name, messages=MESSAGES, max_tokens=16, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_chat_n_and_logprobs(client, served_name):
    response = client.chat.completions.create(model=served_name, messages=MESSAGES, max_tokens=5, temperature=1.0,
                                              seed=7, n=3, logprobs=True, top_logprobs=2)
    assert sorted(c.index for c in response.choices) == [0, 1, 2]
    for choice in response.choices:
        assert 1 <= len(choice.logprobs.content) <= 5
        assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in choice.logprobs.content)


def test_completions_use_the_raw_prompt(client, served_name, tiny_model_dir):
    from transformers import AutoTokenizer

    prompt = "The sea is"
    response = client.completions.create(model=served_name, prompt=prompt, max_tokens=8, temperature=0)
    # No chat template: the prompt is exactly the prompt's tokens.
    assert response.usage.prompt_tokens == len(AutoTokenizer.from_pretrained(tiny_model_dir).encode(prompt))
    assert response.object == "text_completion" and response.model == served_name
    text = response.choices[0].text
    echoed = client.completions.create(model=served_name, prompt=prompt, max_tokens=8, temperature=0, echo=True)
    assert echoed.choices[0].text == prompt + text
    streamed = client.completions.create(model=served_name, prompt=prompt, max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text


def test_completions_several_prompts_and_legacy_logprobs(client, served_name):
    response = client.completions.create(model=served_name, prompt=["a b", "c d"], max_tokens=4, temperature=0,
                                         n=2, logprobs=2)
    assert [c.index for c in sorted(response.choices, key=lambda c: c.index)] == [0, 1, 2, 3]
    by_index = {c.index: c for c in response.choices}
    assert by_index[0].text == by_index[1].text  # greedy: both choices of a prompt agree
    lp = by_index[0].logprobs
    assert "".join(lp.tokens) == by_index[0].text or len(lp.tokens) == 4
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert lp.text_offset[0] == 0 and all(len(d) <= 2 for d in lp.top_logprobs)


def test_errors_become_typed_openai_exceptions(client, server, served_name):
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES, max_tokens=2)
    assert "no-such-model" in not_found.value.message and not_found.value.code == "model_not_found"
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model=served_name, messages=MESSAGES, temperature=5)
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model=served_name, messages=[{"role": "user", "content": "sea " * 2000}])
    assert too_long.value.code == "context_length_exceeded"
    with openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()


def test_tools_reach_the_chat_template(client, served_name):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    plain = client.chat.completions.create(model=served_name, messages=MESSAGES, max_tokens=1)
    with_tools = client.chat.completions.create(model=served_name, messages=MESSAGES, max_tokens=1, tools=tools,
                                                tool_choice="auto")
    dropped = client.chat.completions.create(model=served_name, messages=MESSAGES, max_tokens=1, tools=tools,
                                             tool_choice="none")
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens + 20  # the tool schema is in the prompt
    assert dropped.usage.prompt_tokens == plain.usage.prompt_tokens


def test_completions_take_token_ids(client, served_name, tiny_model_dir):
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(tiny_model_dir).encode("The sea is")
    by_ids = client.completions.create(model=served_name, prompt=ids, max_tokens=6, temperature=0, echo=True)
    by_text = client.completions.create(model=served_name, prompt="The sea is", max_tokens=6, temperature=0,
                                        echo=True)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == len(ids)
