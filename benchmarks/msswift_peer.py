"""ms-swift's own transformers engine (`swift.infer_engine.TransformersEngine`, ms-swift 4's name for its
PtEngine) on the benchmark's token ids, run with a venv that has ms-swift (it pins other transformers and
peft versions than swiftops, so it lives apart):

    /tmp/venv-msswift/bin/python benchmarks/msswift_peer.py --model PATH --prompts P.json --out R.json \
        --max_batch_size 16

ms-swift takes chat messages, not token ids, and has no ignore_eos. So that every engine sees the same ids
and yields the same number of tokens, three of its per-request steps are set here: the template's encode
keeps its output but swaps in the benchmark's ids (looked up by the message text, which carries the
request's index), generation gets min_new_tokens = max_new_tokens (transformers then masks EOS, as the
`hf` engine of the benchmark does), and the template's stop words are dropped. Everything else (batches of
--max_batch_size through `infer`, the data collator, transformers' generate, decoding) is ms-swift's.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # benchmarks.run_record, not swiftops

from benchmarks.run_record import RunRecord, exit_with, device_info, load_prompts, memory_info, timed_run  # noqa: E402

_MARK = "benchmark-request-"


def _engine(args: argparse.Namespace, record: RunRecord) -> Any:
    import torch
    import swift
    from swift.infer_engine import TransformersEngine

    record.set(ms_swift=getattr(swift, "__version__", None))
    engine = TransformersEngine(args.model, model_type=args.model_type, template_type=args.template_type,
                                max_batch_size=args.max_batch_size, torch_dtype=getattr(torch, args.dtype))
    ids_by_text: dict[str, list[int]] = {}
    template = engine.template
    encode = template.encode

    def encode_with_benchmark_ids(inputs: Any, *a: Any, **kw: Any) -> Any:
        text = inputs.messages[-1]["content"]
        encoded = encode(inputs, *a, **kw)
        ids = ids_by_text[text]
        encoded["input_ids"] = list(ids)
        if encoded.get("labels") is not None:
            encoded["labels"] = [-100] * len(ids)
        encoded.pop("length", None)
        return encoded

    template.encode = encode_with_benchmark_ids
    prepare = engine._prepare_generation_config

    def prepare_without_eos(request_config: Any) -> Any:
        config = prepare(request_config)
        config.min_new_tokens = config.max_new_tokens  # EOS masked until the length is reached
        return config

    engine._prepare_generation_config = prepare_without_eos
    engine._add_stop_words = lambda generation_config, request_config: setattr(generation_config, "stop_words", [])
    return engine, ids_by_text


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max_batch_size", type=int, default=16)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--model_type", default="qwen2")
    parser.add_argument("--template_type", default="qwen2_5",
                        help="ms-swift cannot pick one for a random Qwen2 model; its text is replaced by the ids anyway")
    parser.add_argument("--label", default="msswift")
    args = parser.parse_args(argv)
    record = RunRecord(args.out, args.label, **device_info())
    try:
        prompts = load_prompts(args.prompts)
        t0 = time.perf_counter()
        engine, ids_by_text = _engine(args, record)
        record.set(startup_s=round(time.perf_counter() - t0, 2),
                   effective={"max_batch_size": args.max_batch_size, "model_type": args.model_type,
                              "template_type": args.template_type, "engine": type(engine).__name__})
        from swift.infer_engine import InferRequest, RequestConfig

        def generate(sets: list[list[int]], out_len: int) -> int:
            requests = []
            for ids in sets:
                text = f"{_MARK}{len(ids_by_text)}"
                ids_by_text[text] = ids
                requests.append(InferRequest(messages=[{"role": "user", "content": text}]))
            config = RequestConfig(max_tokens=out_len, temperature=0)
            responses = engine.infer(requests, config, use_tqdm=False)
            return sum(r.usage.completion_tokens for r in responses)

        warmup = prompts.get("warmup") or []
        if warmup:
            generate(warmup, int(prompts.get("warmup_output_len", 8)))
        out_len = int(prompts["output_len"])
        for name, sets in prompts["sets"].items():
            record.data["runs"][name] = timed_run(name, len(sets), len(sets) * out_len,
                                                  lambda sets=sets: generate(sets, out_len))
            record.save()
        record.set(memory=memory_info(), ok=all(r.get("ok") for r in record.data["runs"].values()))
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the record says what failed; the parent goes on
        record.fail("engine", exc)  # SystemExit: LMDeploy's environment checks call exit(1) after logging why
    return 0 if record.data["ok"] else 1


def main() -> None:
    exit_with(run)


if __name__ == "__main__":
    main()
