"""The capability table: cells, LMDeploy engine refinement, the error it raises, and a light import."""
from __future__ import annotations

import subprocess
import sys

import pytest

from swiftops.protocol.capabilities import CAPABILITIES, require, support, table_rows, unsupported_reason
from swiftops.protocol.errors import UnsupportedError


def test_every_feature_has_a_cell_for_every_backend():
    for feature in CAPABILITIES:
        for backend in ("pt", "vllm", "lmdeploy"):
            cell = support(backend, feature)
            assert cell.supported or cell.reason, (feature, backend)


def test_lmdeploy_engine_refines_the_lora_cell():
    assert unsupported_reason("lmdeploy", "lora", "pytorch") is None
    assert "TurboMind" in unsupported_reason("lmdeploy", "lora", "turbomind")
    assert unsupported_reason("lmdeploy", "lora") == unsupported_reason("lmdeploy", "lora", "turbomind")


def test_require_raises_a_400_with_the_reason():
    with pytest.raises(UnsupportedError) as info:
        require("vllm", "qlora")
    assert info.value.status == 400 and info.value.code == "unsupported_feature"
    assert info.value.message == ("vllm cannot do qlora: QLoRA (LoRA on a bitsandbytes 4-bit base) runs only on the "
                                  "pt backend")
    require("pt", "qlora")  # no error


def test_unknown_feature_or_backend_is_a_programming_error():
    with pytest.raises(KeyError):
        support("pt", "teleportation")
    with pytest.raises(KeyError):
        support("tgi", "lora")


def test_table_rows_for_the_readme():
    rows = dict(table_rows())
    assert rows["tensor_parallel"]["vllm"] == "yes"
    assert rows["device_map"]["vllm"].startswith("no: vLLM places the model itself")


def test_capabilities_and_the_manifest_layer_import_no_torch():
    code = ("import sys; import swiftops.protocol.capabilities, swiftops.manifest, swiftops.cli.manifest_commands; "
            "heavy = [m for m in ('torch', 'transformers', 'vllm', 'lmdeploy') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
