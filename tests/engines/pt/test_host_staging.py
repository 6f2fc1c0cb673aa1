"""Host-device staging on CPU (values, dtypes, shapes), and a guard that the engine's step path keeps away from the
torch idioms that wait for the GPU (swiftops.engines.pt.host_staging says why; the GPU test proves the waits)."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import torch

import swiftops.engines.pt as pt_package
from swiftops.engines.pt.host_staging import HostStaging, staging_for

# Modules whose code runs at every engine step (pipelined: a wait here idles the GPU).
STEP_MODULES = ["core", "sampler", "model_runner", "cuda_graphs", "mixed_graphs", "block_manager"]


def test_on_cpu_data_becomes_a_tensor_of_the_asked_dtype_and_shape():
    staging = HostStaging(torch.device("cpu"))
    assert not staging.pinned
    ints = staging.to_device([[1, 2, 3], [4, 5, 6]])
    assert ints.dtype == torch.int64 and ints.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert staging.to_device([0.5, 1.5], torch.float32).dtype == torch.float32
    assert staging.to_device([[True], [False]], torch.bool).tolist() == [[True], [False]]
    assert staging.to_device(np.arange(4, dtype=np.int64), torch.int32).tolist() == [0, 1, 2, 3]
    target = torch.zeros(4, 3, dtype=torch.long)
    staging.copy_into(target[1:, :2], [[7, 8], [9, 10], [11, 12]])  # a strided view, as the graphs' inputs are
    assert target.tolist() == [[0, 0, 0], [7, 8, 0], [9, 10, 0], [11, 12, 0]]
    download = staging.to_host(torch.tensor([3, 4]), torch.tensor([[0.25]]))
    assert download.result() == [[3, 4], [[0.25]]] and download.read


def test_a_size_mismatch_in_copy_into_raises():
    staging = HostStaging(torch.device("cpu"))
    try:
        staging.copy_into(torch.zeros(3, dtype=torch.long), [1, 2])
    except RuntimeError:
        return
    raise AssertionError("a 2-element copy into a 3-element buffer was accepted")


def test_each_thread_has_its_own_staging_per_device():
    import threading

    here = staging_for(torch.device("cpu"))
    assert staging_for(torch.device("cpu")) is here
    other = []
    thread = threading.Thread(target=lambda: other.append(staging_for(torch.device("cpu"))))
    thread.start()
    thread.join()
    assert other and other[0] is not here


def _waiting_calls(tree: ast.AST) -> list[str]:
    """`torch.tensor(..., device=...)` (a blocking copy) and any pinned allocation in a module's code."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        keywords = {k.arg for k in node.keywords}
        if name == "tensor" and "device" in keywords:
            found.append(f"line {node.lineno}: torch.tensor(..., device=...)")
        if name == "pin_memory" or "pin_memory" in keywords:
            found.append(f"line {node.lineno}: pin_memory")
    return found


def test_the_step_path_neither_copies_blocking_nor_pins_per_step():
    root = Path(pt_package.__file__).parent
    offenders = {m: _waiting_calls(ast.parse((root / f"{m}.py").read_text())) for m in STEP_MODULES}
    assert not any(offenders.values()), offenders


def test_the_guard_finds_both_idioms():
    code = "x = torch.tensor(rows, device=d)\ny = t.pin_memory()\nz = torch.empty(3, pin_memory=True)\n"
    assert len(_waiting_calls(ast.parse(code))) == 3


def test_a_buffer_view_has_the_copys_dtype_shape_and_bytes():
    """_view carves a staged copy out of a pinned byte buffer (on CPU, an ordinary one stands in)."""
    import torch

    from swiftops.engines.pt.host_staging import _view

    buffer = torch.arange(64, dtype=torch.uint8)
    for dtype, shape in ((torch.int64, (2, 3)), (torch.int32, (5,)), (torch.bool, (7,)), (torch.float32, (1, 4))):
        view = _view(buffer, dtype, shape)
        assert (view.dtype, tuple(view.shape)) == (dtype, shape)
        assert view.data_ptr() == buffer.data_ptr() and view.numel() * view.element_size() <= buffer.numel()
