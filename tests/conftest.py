"""Shared fixtures: tiny random models built once per session, an offline Hugging Face, and the `gpu` marker."""
from __future__ import annotations

import os

# Set before transformers / huggingface_hub are imported anywhere: tests never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


def _interpret_triton_without_cuda() -> None:
    """The Triton kernels' CPU tests run them in Triton's interpreter; it must be chosen before the kernels are
    defined (at import). Where a GPU is present they compile for it."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


_interpret_triton_without_cuda()


def pytest_configure(config: pytest.Config) -> None:
    import torch

    # The machines running the suite are small and shared; more threads than cores only thrash.
    torch.set_num_threads(max(1, min(4, (os.cpu_count() or 1) // 2)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny Qwen2ForCausalLM chat model (seed 0) with tokenizer, chat template and generation config."""
    from swiftops.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), arch="qwen2", seed=0)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny LlamaForCausalLM chat model (seed 0), same tokenizer and template as `tiny_model_dir`."""
    from swiftops.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), arch="llama", seed=0)


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny Qwen2_5_VLForConditionalGeneration (seed 0) with a real processor: Qwen2-VL's image processor, the
    tiny tokenizer plus vision tokens, and Qwen2-VL's chat template (see swiftops.models.tiny_vlm)."""
    from swiftops.models.tiny_vlm import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-qwen2-5-vl"), arch="qwen2_5_vl", seed=0)


def _encode_mp4(frames, fps: int) -> bytes:
    import io

    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def sample_video_bytes() -> bytes:
    """A 3-second 10 fps mp4 (30 frames, 96x64) whose frame i is filled with grey level 8*i."""
    import numpy as np

    frames = [np.full((64, 96, 3), 8 * i, dtype=np.uint8) for i in range(30)]
    return _encode_mp4(frames, fps=10)


@pytest.fixture()
def media_server():
    """A local HTTP server on 127.0.0.1: `server.routes[path] = (status, headers, body)`; `server.url(path)`.
    A body that is a float makes the handler sleep that many seconds first (timeouts)."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    routes: dict = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            status, headers, body = routes.get(self.path, (404, {}, b"not found"))
            if isinstance(body, float):
                time.sleep(body)
                body = b""
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            if "Content-Length" not in headers and "X-No-Length" not in headers:  # X-No-Length: body ends at close
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):  # keep test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.routes = routes
    server.url = lambda path: f"http://127.0.0.1:{server.server_address[1]}{path}"
    yield server
    server.shutdown()
    server.server_close()


def build_lora_adapter(base_dir, out_dir, seed: int, targets=("q_proj", "k_proj", "v_proj", "o_proj", "up_proj"),
                       r: int = 4) -> str:
    """A peft LoRA adapter for `base_dir` with random A and B (peft's default B = 0 would change nothing), B
    scaled up so that greedy outputs really differ from the base model's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets),
                                                  init_lora_weights=False))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(4.0)
    peft_model.save_pretrained(out_dir)
    return str(out_dir)


@pytest.fixture(scope="session")
def make_lora_adapter():
    """`make_lora_adapter(base_dir, out_dir, seed, targets=..., r=4) -> path` (see build_lora_adapter)."""
    return build_lora_adapter


@pytest.fixture
def write_gguf():
    """Writes a minimal GGUF file of an architecture (one embedding tensor): enough for the loaders' checks."""
    def write(path, architecture: str) -> str:
        import gguf
        import numpy as np

        writer = gguf.GGUFWriter(str(path), architecture)
        writer.add_block_count(1)
        writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return str(path)
    return write

