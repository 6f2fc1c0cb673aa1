"""The tiny VLM on CUDA with transformers' full processor (torchvision present there): CUDA-graph decode with
M-RoPE positions, mixed text/image/video batches equal solo runs and transformers' own generate."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from swiftops import InferRequest, PtEngine, RequestConfig

pytestmark = pytest.mark.gpu
GREEDY = RequestConfig(max_tokens=10, temperature=0)
BLUE = Image.new("RGB", (112, 84), (9, 99, 199))
RED = Image.new("RGB", (84, 112), (200, 30, 30))


def test_vlm_batches_with_graphs_and_matches_generate(tiny_vlm_dir):
    engine = PtEngine(str(tiny_vlm_dir), torch_dtype="float32", kv_cache_memory_gb=0.5, max_batch_size=8)
    try:
        assert engine.runner_name == "paged" and engine._core.runner.graphs is not None
        requests = [InferRequest(messages=[{"role": "user", "content": "who are you?"}]),
                    InferRequest(messages=[{"role": "user", "content": "<image><image>What differs?"}],
                                 images=[BLUE, RED]),
                    InferRequest(messages=[{"role": "user", "content": "<video>describe"}],
                                 videos=[[BLUE, RED, BLUE, RED]])]
        batched = [r.choices[0].message.content for r in engine.infer(requests, GREEDY)]
        assert batched == [engine.infer([r], GREEDY)[0].choices[0].message.content for r in requests]
        inputs = engine.encoder.encode(requests[1])
        with torch.inference_mode():
            out = engine.model.generate(**{k: v.to("cuda") if hasattr(v, "to") else v
                                           for k, v in inputs.tensors.items()}, max_new_tokens=10, do_sample=False)
        assert batched[1] == engine.tokenizer.decode(out[0, len(inputs.input_ids):], skip_special_tokens=True)
    finally:
        engine.close()
