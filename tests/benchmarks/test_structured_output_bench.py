"""The structured-output benchmark end to end on the tiny model (the GPU run uses the 0.5B shape)."""
from __future__ import annotations

import json

from benchmarks import structured_output


def test_benchmark_writes_its_json(tiny_model_dir, tmp_path):
    out = tmp_path / "structured.json"
    result = structured_output.run(["--model", str(tiny_model_dir), "--dtype", "float32", "--batch", "4",
                                    "--prompt_len", "16", "--max_tokens", "160", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    outputs = result["json_schema_outputs"]
    assert outputs["count"] == outputs["valid"] == outputs["finish_reasons"]["stop"] == 4
    runs = result["runs"]
    assert runs["free"]["tokens_per_request"] == {"min": 160, "mean": 160.0, "max": 160}
    # free_matched produces exactly the tokens json_schema did: the ratio compares like with like
    assert runs["free_matched"]["completion_tokens"] == runs["json_schema"]["completion_tokens"] < 4 * 160
    assert result["ratios"]["json_schema_vs_free"] == round(runs["json_schema"]["tok_s"] / runs["free"]["tok_s"], 3)
    assert result["first_compile_s"] > 0 and result["logits_width"] == result["tokenizer_size"]
    paired = result["ratios"]["paired_runs"]
    assert len(paired) == 1 and result["ratios"]["json_schema_vs_free_matched_paired"] == paired[0]
    # the traced json_schema run decoded the tokens it produced (each request's first came from prefill), plus at
    # most one row per request that a pipelined step computed after the request's EOS (dropped)
    trace = result["step_trace_last_repeat"]["json_schema"]["by_kind"]
    produced = runs["json_schema"]["completion_tokens"]
    assert produced - 4 <= sum(k["decode_rows"] for k in trace.values()) <= produced
