"""Structured-output overhead on the pt engine: JSON-schema decoding against free decoding at the same batch.

    python -m benchmarks.structured_output --out results/structured.json         # GPU: 0.5B shape, bf16, batch 64
    python -m benchmarks.structured_output --model tiny-model --batch 4 --prompt_len 16 --max_tokens 32 \\
        --repeats 1 --out /tmp/s.json                                            # a smoke run on any model

The workload is issue 20's: the Qwen2.5-0.5B shape (random weights), 64 requests of 128 prompt tokens at once,
max_tokens 256, sampled at temperature 1, and the schema of the structured-output tests (a nested object, an
array with maxItems, an enum, a string with maxLength). Three runs, each timed `--repeats` times (median kept;
the ratio json_schema / free_matched is also taken per repeat, and its median reported):

  free          free decoding, EOS ignored: every request produces max_tokens tokens.
  json_schema   the same requests under response_format json_schema (strict): each stops when its JSON is whole.
  free_matched  free decoding with each request's max_tokens set to what it produced under the schema: the same
                tokens per request as json_schema, so the ratio of the two is the cost of the constraint itself
                (bitmask fill, its copy and kernel, the matchers' advance), not of the batch thinning out as JSON
                requests finish early.

tok/s = completion tokens the requests actually produced / wall seconds. The step timeline of the last repeat's
json_schema and free_matched runs (benchmarks/step_trace.py) shows the per-step cost. The JSON outputs are parsed
and checked against the schema (with jsonschema where installed). The random model needs a real byte-level BPE tokenizer for
JSON to be writable at all, so the built model gets one trained on the spot from Python's standard library
sources and transformers' (151,665 tokens, as Qwen2.5's; the logits keep the 0.5B shape's 151,936 columns, as
Qwen pads its lm_head past its tokenizer; ~1.5 min to train on one core). The model is built once under --model_dir, the tokenizer trained once
under --tokenizer_dir; both are reused.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import random
import statistics
import sys
import sysconfig
import time
from typing import Any, Optional

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/structured_output.py` works too
    sys.path.insert(0, str(REPO))

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "kind": {"enum": ["cat", "dog", "bird"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "owner": {"type": "object",
                  "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 120},
                                 "verified": {"type": "boolean"}},
                  "required": ["age", "verified"], "additionalProperties": False},
    },
    "required": ["name", "kind", "tags", "owner"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "pet", "schema": SCHEMA, "strict": True}}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2.5's tokenizer size; its lm_head (the 0.5B shape's logits) has 151,936 rows: 271 ids no text maps to.
QWEN25_TOKENIZER_SIZE = 151665
_TOKENIZER_MARKER = "bpe_tokenizer.json"


def _corpus() -> list[str]:
    """Python sources on this machine: the standard library and transformers (plenty of distinct words)."""
    roots = [pathlib.Path(sysconfig.get_paths()["stdlib"])]
    try:
        import transformers
        roots.append(pathlib.Path(transformers.__file__).parent)
    except ImportError:
        pass
    files = []
    for root in roots:
        files.extend(f for f in sorted(root.rglob("*.py")) if "site-packages" not in f.relative_to(root).parts)
    return [str(f) for f in files]


def train_bpe_tokenizer(out: pathlib.Path, vocab_size: int) -> pathlib.Path:
    """A byte-level BPE tokenizer of up to `vocab_size` - 3 tokens plus the chat specials, trained once into `out`
    (~1.5 min on one core) and reused from there: copy the folder to skip the training on another machine."""
    marker = out / _TOKENIZER_MARKER
    if marker.exists() and json.loads(marker.read_text()).get("vocab_size") == vocab_size:
        return out
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t0 = time.perf_counter()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    files = _corpus()
    tok.train_from_iterator((pathlib.Path(f).read_bytes().decode("utf-8", "replace") for f in files), trainer)
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   additional_special_tokens=["<|im_start|>"])
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    marker.write_text(json.dumps({"vocab_size": vocab_size, "size": len(fast), "files": len(files),
                                  "train_s": round(time.perf_counter() - t0, 1)}))
    return out


def with_bpe_tokenizer(model_dir: pathlib.Path, tokenizer_dir: pathlib.Path) -> int:
    """Give the model at `model_dir` the tokenizer trained in `tokenizer_dir` (the config's special ids rewritten to
    match); returns the tokenizer's size."""
    import shutil

    from transformers import AutoTokenizer

    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (model_dir / name).unlink(missing_ok=True)
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, model_dir / name)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = {"eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
           "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    for name in ("config.json", "generation_config.json"):
        path = model_dir / name
        data = json.loads(path.read_text())
        data.update(ids)
        path.write_text(json.dumps(data, indent=2))
    return len(tokenizer)


def _prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab - len(SPECIALS)) for _ in range(length)] for _ in range(count)]


def _valid(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    try:
        import jsonschema
    except ImportError:  # the GPU machine's kit: parse plus the top-level keys
        return isinstance(value, dict) and list(value) == list(SCHEMA["properties"])
    try:
        jsonschema.validate(value, SCHEMA)
    except jsonschema.ValidationError:
        return False
    return True


class Bench:
    def __init__(self, engine: Any, prompts: list[list[int]], max_tokens: int) -> None:
        self.engine = engine
        self.prompts = prompts
        self.max_tokens = max_tokens

    def _timed(self, configs: list[Any]) -> tuple[float, list[Any]]:
        from swiftops import InferRequest

        async def gather() -> list[Any]:
            return await asyncio.gather(*[self.engine.infer_async(InferRequest(prompt=p), c)
                                          for p, c in zip(self.prompts, configs)])
        t0 = time.perf_counter()
        responses = asyncio.run(gather())
        return time.perf_counter() - t0, responses

    def free(self, lengths: Optional[list[int]] = None) -> tuple[float, list[Any]]:
        from swiftops import RequestConfig

        lengths = lengths or [self.max_tokens] * len(self.prompts)
        return self._timed([RequestConfig(max_tokens=n, temperature=1.0, ignore_eos=True) for n in lengths])

    def json_schema(self) -> tuple[float, list[Any]]:
        from swiftops import RequestConfig

        config = RequestConfig(max_tokens=self.max_tokens, temperature=1.0, response_format=RESPONSE_FORMAT)
        return self._timed([config] * len(self.prompts))


def _summary(runs: list[tuple[float, list[Any]]]) -> dict[str, Any]:
    """Median tok/s over the repeats (each repeat's requests and lengths are the same, bar sampling)."""
    rates = [sum(r.usage.completion_tokens for r in responses) / seconds for seconds, responses in runs]
    tokens = [r.usage.completion_tokens for r in runs[-1][1]]
    return {"tok_s": round(statistics.median(rates), 1), "tok_s_runs": [round(r, 1) for r in rates],
            "seconds": round(statistics.median(seconds for seconds, _ in runs), 3),
            "completion_tokens": sum(tokens),
            "tokens_per_request": {"min": min(tokens), "mean": round(sum(tokens) / len(tokens), 1),
                                   "max": max(tokens)}}


def _first_compile_s(model: str, vocab_size: int) -> float:
    """A cold compile of the schema (xgrammar's tokenizer tables included), as the first request of a schema
    waits for it (off the engine loop)."""
    from transformers import AutoTokenizer

    from swiftops.engines.pt.guided_decoding import GrammarCompiler
    from swiftops.protocol import RequestConfig
    from swiftops.protocol.structured_output import output_constraint

    tokenizer = AutoTokenizer.from_pretrained(model)
    compiler = GrammarCompiler(tokenizer, vocab_size, {tokenizer.eos_token_id})
    t0 = time.perf_counter()
    compiler.compile_sync(output_constraint(RequestConfig(response_format=RESPONSE_FORMAT)))
    compiler.close()
    return round(time.perf_counter() - t0, 3)


def run(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the JSON result file")
    parser.add_argument("--model", help="an existing model directory (default: build the 0.5B shape)")
    parser.add_argument("--model_dir", default=".bench-models/qwen2.5-0.5b-bf16-bpe")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--tokenizer_dir", default=".bench-models/bpe-tokenizer-151665",
                        help="the trained BPE tokenizer's folder (trained there once, then reused)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt_len", type=int, default=128)
    parser.add_argument("--max_tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)

    from benchmarks.run_record import device_info
    from benchmarks.step_trace import StepTrace
    from swiftops import PtEngine

    result: dict[str, Any] = {"benchmark": "structured_output", "batch": args.batch, "prompt_len": args.prompt_len,
                              "max_tokens": args.max_tokens, "temperature": 1.0, "schema": SCHEMA,
                              "device": device_info()}
    model = args.model
    if model is None:
        from benchmarks.bench_model import build_model

        path = build_model(args.model_dir, "0.5b", args.dtype)
        tokenizer_dir = train_bpe_tokenizer(pathlib.Path(args.tokenizer_dir), QWEN25_TOKENIZER_SIZE)
        result["tokenizer_size"] = with_bpe_tokenizer(path, tokenizer_dir)
        model = str(path)
    t0 = time.perf_counter()
    engine = PtEngine(model, torch_dtype=args.dtype)
    logits_width = engine.model.config.get_text_config().vocab_size
    result.update(model=model, startup_s=round(time.perf_counter() - t0, 1), logits_width=logits_width,
                  tokenizer_size=len(engine.tokenizer), cuda_graphs=engine.cuda_graphs,
                  max_batch_size=engine.max_batch_size, first_compile_s=_first_compile_s(model, logits_width))
    try:
        vocab = len(engine.tokenizer)
        warm = Bench(engine, _prompts(args.batch, args.prompt_len, vocab, seed=1), min(args.max_tokens, 32))
        warm.free()
        warm.json_schema()
        bench = Bench(engine, _prompts(args.batch, args.prompt_len, vocab, seed=0), args.max_tokens)
        runs: dict[str, list[tuple[float, list[Any]]]] = {"free": [], "json_schema": [], "free_matched": []}
        pipelined = engine._core.pipelined_steps
        trace, traces = StepTrace(engine), {}
        for _ in range(args.repeats):  # interleaved, so that drift (clocks, heat) hits all three alike
            runs["free"].append(bench.free())
            trace.start()
            runs["json_schema"].append(bench.json_schema())
            traces["json_schema"] = trace.stop()
            lengths = [r.usage.completion_tokens for r in runs["json_schema"][-1][1]]
            trace.start()
            runs["free_matched"].append(bench.free(lengths))
            traces["free_matched"] = trace.stop()
        result["pipelined_steps"] = engine._core.pipelined_steps - pipelined
        result["step_trace_last_repeat"] = traces
    finally:
        engine.close()
    result["runs"] = {name: _summary(timed) for name, timed in runs.items()}
    outputs = [r.choices[0] for _, responses in runs["json_schema"] for r in responses]
    result["json_schema_outputs"] = {
        "count": len(outputs), "valid": sum(_valid(c.message.content) for c in outputs),
        "finish_reasons": {reason: sum(c.finish_reason == reason for c in outputs)
                           for reason in sorted({c.finish_reason for c in outputs})},
        "example": outputs[0].message.content}
    free, constrained, matched = (result["runs"][k]["tok_s"] for k in ("free", "json_schema", "free_matched"))
    # Each repeat's json_schema run against the free_matched run right after it, on the same tokens: the median of
    # these pairs is the least sensitive to drift between repeats (each run is a fraction of a second).
    pairs = [(sum(r.usage.completion_tokens for r in a) / sa) / (sum(r.usage.completion_tokens for r in b) / sb)
             for (sa, a), (sb, b) in zip(runs["json_schema"], runs["free_matched"], strict=True)]
    result["ratios"] = {"json_schema_vs_free": round(constrained / free, 3),
                        "json_schema_vs_free_matched": round(constrained / matched, 3),
                        "json_schema_vs_free_matched_paired": round(statistics.median(pairs), 3),
                        "paired_runs": [round(p, 3) for p in pairs]}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(json.dumps({k: result[k] for k in ("ratios", "json_schema_outputs")} |
                     {k: v["tok_s"] for k, v in result["runs"].items()}, ensure_ascii=False))
    return result


def main() -> None:
    run()


if __name__ == "__main__":
    main()
