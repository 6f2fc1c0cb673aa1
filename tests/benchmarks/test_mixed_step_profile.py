"""The step-shape profiler (benchmarks/mixed_step_profile.py) on the tiny model: each shape is timed through the
runner as the engine calls it, and the blocks it took go back."""
from __future__ import annotations

import pytest

from benchmarks.mixed_step_profile import StepBench, parse_shape, run
from swiftops import PtEngine


def test_shapes_parse_into_prompts_length_and_decode_rows():
    assert parse_shape("5x128+100") == (5, 128, 100)
    assert parse_shape("+64") == (0, 0, 64)
    assert parse_shape("1x512") == (1, 512, 0)
    with pytest.raises(ValueError):
        parse_shape("5+3")


def test_every_shape_is_timed_and_its_blocks_go_back(tiny_model_dir):
    engine = PtEngine(str(tiny_model_dir), max_batch_size=8, max_model_len=128)
    try:
        blocks = engine._core.runner.blocks
        free = blocks.num_free
        doc = run(engine, ["+4", "2x16+4", "1x24"], [], context=20, repeats=2)
        assert blocks.num_free == free
        bench = StepBench(engine, context=20)
        items, seqs = bench.build(2, 16, 3)
        assert [n for _, n in items] == [16, 16, 1, 1, 1]
        assert all(s.num_computed == 19 for s in seqs[2:]) and all(s.num_computed == 0 for s in seqs[:2])
        bench.release(seqs)
    finally:
        engine.close()
    assert list(doc["steps"]) == ["+4", "2x16+4", "1x24"]
    for entry in doc["steps"].values():
        assert entry["gpu_ms"] > 0 and entry["host_ms"] > 0
    assert doc["idle_buckets_ms"] is None and "kernels" not in doc  # CPU: no graphs, no CUDA kernels
