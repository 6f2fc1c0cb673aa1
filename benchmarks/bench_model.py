"""Random-weight Qwen2-shaped models for benchmarks, built from a transformers config (no hub needed).

    python -m benchmarks.bench_model --shape 7b --out .bench-models/qwen2.5-7b-bf16 --dtype bfloat16

A model already built with the same shape, dtype and seed is reused (its `bench_model.json` says what
it is), so a second workload on the same machine does not write 15 GB again.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

QWEN25_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  intermediate_size=4864, vocab_size=151936, max_position_embeddings=32768,
                  tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6)
# Qwen2.5-7B's shape (untied embeddings).
QWEN25_7B = dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                 intermediate_size=18944, vocab_size=152064, max_position_embeddings=32768,
                 tie_word_embeddings=False, rope_theta=1000000.0, rms_norm_eps=1e-6)
# ~30M parameters: small enough that the CPU benchmark measures per-step host work as much as matmuls.
QWEN2_30M = dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                 intermediate_size=1408, vocab_size=8192, max_position_embeddings=32768,
                 tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6)
SHAPES = {"0.5b": QWEN25_05B, "7b": QWEN25_7B, "30m": QWEN2_30M}


ROLE_WORDS = ["system", "user", "assistant"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _word_tokenizer(vocab_size: int, out: pathlib.Path) -> None:
    """A word-level tokenizer covering every id, so any generated id decodes (the text is meaningless).

    Ids 0..vocab-7 are the words w0, w1, ...; then the chat roles, then the special tokens. transformers 5's
    AutoTokenizer loads it as Qwen2Tokenizer (by the config's model_type), which rebuilds a byte-level BPE
    and cannot encode these words, though it decodes ids fine: encode text with `encode_text` below.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(vocab_size - len(ROLE_WORDS) - len(SPECIALS))] + ROLE_WORDS + SPECIALS
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
                          "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")
    fast.save_pretrained(out)


def encode_text(model_path: str | pathlib.Path, text: str) -> list[int]:
    """Token ids of `text` by the model's own tokenizer.json (the word-level tokenizer above)."""
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(pathlib.Path(model_path) / "tokenizer.json")).encode(text).ids


def _identity(shape: str, dtype: str, seed: int) -> dict:
    return {"shape": shape, "dtype": dtype, "seed": seed, "config": SHAPES[shape], "tokenizer": 2}


def is_built(out_dir: str | pathlib.Path, shape: str, dtype: str = "bfloat16", seed: int = 0) -> bool:
    """Whether a finished model of this shape, dtype and seed is there (checked without importing torch)."""
    marker = pathlib.Path(out_dir) / "bench_model.json"
    try:
        return json.loads(marker.read_text()).get("identity") == _identity(shape, dtype, seed)
    except (OSError, ValueError):
        return False


def build_model(out_dir: str | pathlib.Path, shape: str, dtype: str = "bfloat16", seed: int = 0,
                device: str | None = None) -> pathlib.Path:
    """Builds (or reuses) a random-weight model of `shape` under `out_dir`; returns its path."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = pathlib.Path(out_dir)
    if is_built(out, shape, dtype, seed):
        return out
    identity = _identity(shape, dtype, seed)
    marker = out / "bench_model.json"
    out.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)  # a half-written model is never mistaken for a finished one
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    dims = SHAPES[shape]
    config = Qwen2Config(**dims, eos_token_id=dims["vocab_size"] - 1, pad_token_id=dims["vocab_size"] - 3,
                         bos_token_id=None)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))  # the 7B is built directly in bf16 (no 30 GB fp32 copy)
    try:
        with torch.device(device), torch.no_grad():
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    built = time.perf_counter()
    model.save_pretrained(out, safe_serialization=True, max_shard_size="5GB")
    GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
                     do_sample=False).save_pretrained(out)
    _word_tokenizer(config.vocab_size, out)
    params = sum(p.numel() for p in model.parameters())
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    marker.write_text(json.dumps({"identity": identity, "parameters": params,
                                  "build_s": round(built - t0, 1), "save_s": round(time.perf_counter() - built, 1)}))
    return out


def build_qwen25_05b_shaped(out_dir: str, dtype: str = "bfloat16", seed: int = 0) -> pathlib.Path:
    """The 0.5B shape (kept for benchmarks/serving.py)."""
    return build_model(out_dir, "0.5b", dtype, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="where to initialise the weights (default: cuda if present)")
    args = parser.parse_args()
    path = build_model(args.out, args.shape, args.dtype, args.seed, args.device)
    print(json.dumps({"path": str(path), **json.loads((path / "bench_model.json").read_text())}))


if __name__ == "__main__":
    main()
