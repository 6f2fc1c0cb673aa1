"""`swiftops infer` with a GGUF checkpoint that cannot load: one `error: ...` line, exit code 2, no traceback."""
from __future__ import annotations



def _one_line_error(done, *fragments: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_gguf_file(run_swiftops, tmp_path):
    _one_line_error(run_swiftops("infer", "--model", "models/missing.Q4_K_M.gguf"),
                    "GGUF file models/missing.Q4_K_M.gguf does not exist")
    _one_line_error(run_swiftops("infer", "--model", str(tmp_path), "--gguf_file", "nope.gguf"),
                    "nope.gguf does not exist")


def test_gguf_of_an_unsupported_architecture(run_swiftops, tmp_path, write_gguf):
    write_gguf(tmp_path / "rwkv.gguf", "rwkv6")
    (tmp_path / "q.jsonl").write_text('{"query": "hi"}\n', encoding="utf-8")
    _one_line_error(run_swiftops("infer", "--model", "rwkv.gguf", "--val_dataset", "q.jsonl"),
                    "architecture rwkv6 is not supported")
