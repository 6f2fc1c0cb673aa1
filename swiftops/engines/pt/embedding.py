"""`PtEmbeddingEngine`: sentence embeddings from a transformers encoder (or decoder), pooled as the checkpoint says.

A sentence-transformers checkpoint declares its pipeline in modules.json (Transformer -> Pooling ->
Normalize) and its pooling in `<pooling dir>/config.json`; all-MiniLM-L6-v2, for instance, is mean pooling
over real tokens then L2 normalisation, at most 256 tokens (sentence_bert_config.json). Without those
files: mean pooling for encoders, last-token pooling for decoders, normalised.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from swiftops.engines.base import InferEngine
from swiftops.engines.engine_options import split_options
from swiftops.protocol import (
    AdapterRequest,
    BadRequestError,
    ConfigError,
    EmbeddingData,
    EmbeddingResponse,
    InferRequest,
    PromptTooLongError,
    RequestConfig,
    UnsupportedError,
    UsageInfo,
)
from swiftops.protocol.settings import EngineSettings, GenerationSettings, MediaSettings, ModelSettings

if TYPE_CHECKING:
    from typing_extensions import Self

EMBEDDING_BATCH = 32
# The settings an embedding (or classifier) engine uses; PtEngine(<embedding checkpoint>, ...) hands its keywords
# here, and one that only generation uses (kv_cache_memory_gb, temperature, ...) is refused rather than ignored.
EMBEDDING_SETTINGS = frozenset(
    {
        "model",
        "torch_dtype",
        "device_map",
        "max_model_len",
        "model_revision",
        "trust_remote_code",
        "task_type",
        "model_type",
        "infer_backend",
        "max_batch_size",
    }
)


def _read_json(path: str) -> Any:  # the JSON file's value (modules.json is a list), or None without the file
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class TextEncoderEngine(InferEngine):
    """The construction the embedding and classifier engines share: text in, one forward, nothing sampled. Built
    from keyword arguments (PtEngine's names for the settings in EMBEDDING_SETTINGS; any other is refused) or
    from the settings models, as every engine is; each subclass loads its model in `_setup`."""

    def __init__(
        self, model: str, *, served_model_name: str | None = None, attn_impl: str | None = None, **options: Any
    ) -> None:
        """`attn_impl` (ms-swift's) is accepted: transformers' default attention runs."""
        model_settings, engine_settings, _ = split_options(
            {"model": model, **options}, type(self).__name__, EMBEDDING_SETTINGS
        )
        self._setup(model_settings, engine_settings, served_model_name)

    @classmethod
    def from_settings(
        cls,
        model: ModelSettings,
        engine: EngineSettings,
        generation: GenerationSettings | None = None,
        media: MediaSettings | None = None,
        *,
        serving: bool = False,
        served_model_name: str | None = None,
    ) -> Self:
        """The signature every engine shares; these take text only and have no sampling defaults."""
        self = cls.__new__(cls)
        self._setup(model, engine, served_model_name)
        return self

    @abstractmethod
    def _setup(self, settings: ModelSettings, engine: EngineSettings, served_model_name: str | None) -> None:
        """Load the model the settings name (each engine its own kind)."""


@dataclass(frozen=True)
class Pooling:
    mode: str  # "mean", "cls", "max", "mean_sqrt_len", "lasttoken"
    normalize: bool
    max_seq_length: int | None


def read_pooling(model_path: str, is_decoder: bool) -> Pooling:
    """The pooling a sentence-transformers checkpoint declares (modules.json + the Pooling module's config)."""
    modules = _read_json(os.path.join(model_path, "modules.json")) or []
    bert_config = _read_json(os.path.join(model_path, "sentence_bert_config.json")) or {}
    max_len = bert_config.get("max_seq_length")
    if not modules:
        return Pooling("lasttoken" if is_decoder else "mean", True, max_len)
    mode, normalize = "mean", False
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith("Pooling"):
            pooling = _read_json(os.path.join(model_path, module.get("path", ""), "config.json")) or {}
            if "pooling_mode" in pooling:
                mode = {"mean_tokens": "mean", "cls_token": "cls", "max_tokens": "max"}.get(
                    pooling["pooling_mode"], pooling["pooling_mode"]
                )
            else:
                for name in ("cls_token", "max_tokens", "mean_sqrt_len_tokens", "lasttoken", "mean_tokens"):
                    if pooling.get(f"pooling_mode_{name}"):
                        mode = {
                            "cls_token": "cls",
                            "max_tokens": "max",
                            "mean_sqrt_len_tokens": "mean_sqrt_len",
                            "mean_tokens": "mean",
                        }.get(name, name)
                        break
        elif kind.endswith("Normalize"):
            normalize = True
    return Pooling(mode, normalize, max_len)


def pool(hidden, mask, mode: str):
    """hidden: [B, S, H], mask: [B, S] (1 = real token, right-padded) -> [B, H]."""
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    if mode == "lasttoken":
        last = mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    summed, count = (hidden * m).sum(dim=1), m.sum(dim=1).clamp(min=1e-9)
    return summed / (count.sqrt() if mode == "mean_sqrt_len" else count)


class PtEmbeddingEngine(TextEncoderEngine):
    """`PtEmbeddingEngine("path/to/all-MiniLM-L6-v2")`; `await engine.embed_async(["a", "b"])` -> 2 vectors.

    `infer` / `infer_async` answer an `EmbeddingResponse` per request (ms-swift's behaviour for embedding
    models): the embedding of the raw prompt, or of the last message's text.
    """

    task_type = "embedding"
    # Known once the model is loaded (the interface allows None for backends that do not know them).
    max_model_len: int
    max_batch_size: int

    def _setup(self, settings: ModelSettings, engine: EngineSettings, served_model_name: str | None) -> None:
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        from swiftops.engines.pt.checkpoint import check_model_source, device_map_arg, resolve_dtype

        model, max_model_len = settings.model or "", settings.max_model_len
        source = check_model_source(model)
        common: dict[str, Any] = {"revision": settings.model_revision, "trust_remote_code": settings.trust_remote_code}
        placement = {"device_map": device_map_arg(settings.device_map)} if settings.device_map else {}
        try:
            config = AutoConfig.from_pretrained(source, **common)
            self.tokenizer = AutoTokenizer.from_pretrained(source, **common)
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            self.dtype = resolve_dtype(settings.torch_dtype, device, config)
            self.model = AutoModel.from_pretrained(source, dtype=self.dtype, **common, **placement)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load {model} as an embedding model: {exc}") from exc
        if placement:  # inputs go where the first layers are
            device = next(self.model.parameters()).device
        else:
            self.model.to(device)
        self.device = device
        self.model.eval()
        is_decoder = bool(getattr(config, "is_decoder", False)) or any(
            a.endswith("ForCausalLM") for a in (config.architectures or [])
        )
        self.pooling = (
            read_pooling(source, is_decoder)
            if os.path.isdir(source)
            else Pooling("lasttoken" if is_decoder else "mean", True, None)
        )
        positions = getattr(config, "max_position_embeddings", None) or 512
        self.max_model_len = min(x for x in (max_model_len, self.pooling.max_seq_length, positions) if x)
        self.model_name = served_model_name or os.path.basename(os.path.normpath(model))
        self.max_batch_size = engine.max_batch_size or EMBEDDING_BATCH
        self._lock = threading.Lock()  # one forward at a time: the model and the CPU threads are shared

    # ---- embedding --------------------------------------------------------------------------------
    def _batch(self, inputs: list[str | list[int]]):
        import torch

        rows = []
        for item in inputs:
            if isinstance(item, str):
                ids = self.tokenizer(item, truncation=True, max_length=self.max_model_len)["input_ids"]
            elif isinstance(item, list) and all(isinstance(t, int) for t in item):
                if len(item) > self.max_model_len:
                    raise PromptTooLongError(len(item), self.max_model_len)
                ids = list(item)
            else:
                raise BadRequestError("embedding inputs are strings or lists of token ids", param="input")
            if not ids:
                raise BadRequestError("an embedding input is empty", param="input")
            rows.append(ids)
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)
        return ids, mask

    def embed(self, inputs: list[str | list[int]]) -> list[list[float]]:
        """Embeddings of `inputs` (texts, or token id lists), synchronously."""
        import torch

        vectors: list[list[float]] = []
        for start in range(0, len(inputs), self.max_batch_size):
            ids, mask = self._batch(inputs[start : start + self.max_batch_size])
            with self._lock, torch.inference_mode():
                hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, S, H]
                pooled = pool(hidden.float(), mask, self.pooling.mode)
                if self.pooling.normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
            vectors.extend(pooled.cpu().tolist())
        return vectors

    async def embed_async(self, inputs: list[Any]) -> list[list[float]]:
        if not inputs:
            raise BadRequestError("`input` must not be empty", param="input")
        return await asyncio.to_thread(self.embed, list(inputs))

    # ---- the chat interface: an embedding per request ----------------------------------------------
    @staticmethod
    def text_of(request: InferRequest) -> str | list[int]:
        if request.prompt is not None:
            return request.prompt
        content = request.messages[-1].get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        return content or ""

    async def infer_async(  # type: ignore[override]  # ms-swift's embedding engines answer infer() with embeddings
        self,
        request: InferRequest,
        request_config: RequestConfig | None = None,
        *,
        adapter_request: AdapterRequest | None = None,
    ) -> EmbeddingResponse:
        if request_config is not None and request_config.stream:
            raise UnsupportedError("an embedding model does not stream; send stream=false")
        if request.images or request.videos or request.audios:
            raise UnsupportedError("this embedding model takes text only")
        text = self.text_of(request)
        [vector] = await self.embed_async([text])
        tokens = len(text) if isinstance(text, list) else len(self.tokenizer(text)["input_ids"])
        return EmbeddingResponse(
            model=self.model_name,
            data=[EmbeddingData(index=0, embedding=vector)],
            usage=UsageInfo(prompt_tokens=tokens, total_tokens=tokens),
        )

    async def _timed(self, request, config, adapter_request, metrics, key):
        # An EmbeddingResponse has no choices: count it as one sample with no generated tokens.
        for m in metrics:
            m.start(key)
        response = await self.infer_async(request, config, adapter_request=adapter_request)
        for m in metrics:
            m.finish(key, response.usage.prompt_tokens, 0, 1)
        return response
