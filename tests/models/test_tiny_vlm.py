"""The tiny VLM builder: both Qwen VL generations load offline with the auto classes and run an image."""
import pytest
import torch
from PIL import Image

from swiftops.models.tiny_vlm import build_tiny_vlm
from swiftops.protocol import ConfigError, InferRequest
from swiftops.template.multimodal import MultimodalEncoder


@pytest.mark.parametrize("arch", ["qwen2_vl"])  # qwen2_5_vl is the session fixture, exercised in tests/template
def test_other_arch_builds_loads_and_runs(tmp_path, arch):
    from transformers import AutoModelForImageTextToText

    path = build_tiny_vlm(tmp_path / arch, arch=arch, seed=1)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    assert model.config.model_type == arch
    encoder = MultimodalEncoder.from_pretrained(str(path))
    inputs = encoder.encode(InferRequest(messages=[{"role": "user", "content": "<image>hi"}],
                                         images=[Image.new("RGB", (56, 56))]))
    with torch.inference_mode():
        assert torch.isfinite(model(**inputs.tensors).logits).all()


def test_same_seed_same_weights_and_no_overwrite_of_other_dirs(tmp_path, tiny_vlm_dir):
    from safetensors.torch import load_file

    again = build_tiny_vlm(tmp_path / "again", seed=0)
    a, b = load_file(tiny_vlm_dir / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        build_tiny_vlm(tmp_path / "precious")
