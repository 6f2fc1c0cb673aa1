"""TokenDecoder (the API server's and the LMDeploy relay's detokenizer): a whole answer handed over at once is
decoded in one go, and gives the text the same tokens give one step at a time."""
from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from swiftops.engines.token_decoder import TokenDecoder


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def _texts(tokenizer, ids, finish, **kwargs):
    """(text fed one token per call, text fed all at once with the finish, completion counts)."""
    step = TokenDecoder(tokenizer, [1, 2, 3], 0)
    pieces = [step.feed([t], None, 3, **kwargs).text for t in ids[:-1]]
    last = step.feed(ids[-1:], finish, 3, **kwargs)
    whole = TokenDecoder(tokenizer, [1, 2, 3], 0).feed(list(ids), finish, 3, **kwargs)
    return "".join(pieces) + last.text, whole.text, (last.completion_tokens, whole.completion_tokens)


def test_a_whole_answer_decodes_as_the_same_tokens_one_by_one(tokenizer):
    rng = random.Random(0)
    multibyte = tokenizer.encode("héllo wörld 你好 🙂 done", add_special_tokens=False)
    for trial in range(20):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 40))] + multibyte[: trial % 9]
        by_step, whole, counts = _texts(tokenizer, ids, "length")
        assert by_step == whole and counts == (len(ids), len(ids))
    text = tokenizer.decode(multibyte)
    assert _texts(tokenizer, multibyte, "length")[1] == text


def test_a_final_stop_token_is_not_text_unless_the_backend_says_so(tokenizer):
    ids = tokenizer.encode("the end", add_special_tokens=False) + [tokenizer.eos_token_id]
    by_step, whole, counts = _texts(tokenizer, ids, "stop")
    assert by_step == whole == "the end" and counts == (len(ids), len(ids))
    # LMDeploy keeps EOS out of its ids: the last token is text
    words = tokenizer.encode("the end", add_special_tokens=False)
    by_step, whole, _ = _texts(tokenizer, words, "stop", final_token_is_text=True)
    assert by_step == whole == "the end"


def test_stop_strings_still_end_the_text_token_by_token(tokenizer):
    ids = tokenizer.encode("one two three four", add_special_tokens=False)
    out = TokenDecoder(tokenizer, [1], 0, stop=(" three",)).feed(ids, "length", 1)
    assert out.text == "one two" and out.finish_reason == "stop"
    assert out.completion_tokens < len(ids)  # tokens after the stop string are not counted


def test_streamed_text_with_stop_strings_is_the_whole_text_cut_at_the_first_stop(tokenizer):
    """Token by token over long answers (the detokenizer keeps only a stop string's reach of handed-out text):
    what is streamed is the whole decode cut before the earliest stop string, and no chunk ever shows a piece
    of a stop string."""
    rng = random.Random(1)
    words = ["alpha", " beta", " gamma", "END", " delta", "\n\n", " ##", "你好", "🙂", " omega"]
    for trial in range(40):
        text = "".join(rng.choice(words) for _ in range(rng.randrange(5, 200)))
        ids = tokenizer.encode(text, add_special_tokens=False)
        stops = tuple(rng.sample(["END", "\n\n", " ##", "gamma delta", "你好🙂", "zzz"], rng.randrange(1, 4)))
        decoder = TokenDecoder(tokenizer, [1, 2], 0, stop=stops)
        pieces, finish = [], None
        for token in ids:
            out = decoder.feed([token], None, 2)
            pieces.append(out.text)
            if out.finish_reason is not None:
                finish = out.finish_reason
                break
        if finish is None:
            pieces.append(decoder.feed([], "length", 2).text)
        full = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        cuts = [i for i in (full.find(s) for s in stops) if i >= 0]
        expected = full[: min(cuts)] if cuts else full
        assert "".join(pieces) == expected, (trial, stops)
        assert finish == ("stop" if cuts else None)
        for piece in pieces:
            assert not any(s in piece for s in stops)
