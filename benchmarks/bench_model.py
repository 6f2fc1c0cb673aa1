"""Random-weight models for benchmarks, built from a transformers config (no hub needed)."""
from __future__ import annotations

import json
import pathlib

QWEN25_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  intermediate_size=4864, vocab_size=151936, max_position_embeddings=32768,
                  tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6)


def _word_tokenizer(vocab_size: int, out: pathlib.Path) -> None:
    """A word-level tokenizer covering every id, so any generated id decodes (the text is meaningless)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size - 3)}
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    for k, tok in enumerate(specials):
        vocab[tok] = vocab_size - 3 + k
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> "
                          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")
    fast.save_pretrained(out)


def build_qwen25_05b_shaped(out_dir: str, dtype: str = "bfloat16", seed: int = 0) -> pathlib.Path:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = Qwen2Config(**QWEN25_05B, eos_token_id=QWEN25_05B["vocab_size"] - 1,
                         pad_token_id=QWEN25_05B["vocab_size"] - 3)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(out)
    GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
                     do_sample=False).save_pretrained(out)
    _word_tokenizer(config.vocab_size, out)
    (out / "bench_model.json").write_text(json.dumps({"shape": "qwen2.5-0.5b", "dtype": dtype, "seed": seed}))
    return out
