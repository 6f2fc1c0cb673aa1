"""Loading a transformers causal LM and its tokenizer from a local path or a hub id."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from swiftops.engines.gguf_source import GGUF_EXTRA, GgufSource, gguf_source
from swiftops.protocol import ConfigError

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    generation_config: Any
    device: torch.device
    dtype: torch.dtype
    max_model_len: int
    processor: Any = None  # set for multimodal checkpoints (AutoModelForImageTextToText)


def _first_line(exc: BaseException) -> str:
    """transformers' errors span paragraphs; a CLI error is one line."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _looks_like_hub_id(model: str) -> bool:
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not model.startswith((".", "/", "~"))


def check_model_source(model: str | None) -> str:
    if not model:
        raise ConfigError(
            "no model given: pass --model with a hub id (e.g. Qwen/Qwen2.5-0.5B-Instruct) or a local path "
            "(`swiftops tiny-model ./tiny-model` makes an offline test model)"
        )
    if gguf_source(model) is not None:
        raise ConfigError(f"{model} is a GGUF checkpoint, which loads as a chat/causal LM only; drop --task_type")
    if os.path.exists(model):
        if not os.path.exists(os.path.join(model, "config.json")):
            raise ConfigError(f"{model} has no config.json: point --model at a transformers checkpoint directory")
        return model
    if _looks_like_hub_id(model):
        return model
    raise ConfigError(f"model path {model} does not exist; pass an existing directory or a hub id like org/name")


def resolve_dtype(torch_dtype: Any, device: torch.device, config: Any) -> torch.dtype:
    """`torch_dtype`: a name ("bfloat16", "auto") or a torch.dtype, as ms-swift's Python API takes it."""
    if isinstance(torch_dtype, torch.dtype):
        return torch_dtype
    if torch_dtype and torch_dtype != "auto":
        if torch_dtype not in _DTYPES:
            raise ConfigError(
                f"torch_dtype {torch_dtype!r} is not one of auto, {', '.join(_DTYPES)} "
                f"(or a torch.dtype such as torch.bfloat16)"
            )
        return _DTYPES[torch_dtype]
    if device.type == "cpu":
        return torch.float32  # half precision on CPU is slow and lossy
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(stored, str):
        stored = _DTYPES.get(stored)
    return stored if stored in (torch.float16, torch.bfloat16) else torch.bfloat16


def _context_length(config: Any) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(text, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return 4096


def device_map_arg(device_map: str) -> Any:
    """--device_map as transformers' from_pretrained takes it: a name (auto, cpu, cuda:0) or a JSON map, parsed."""
    return json.loads(device_map) if device_map.strip().startswith("{") else device_map


def parse_max_memory(max_memory: str) -> dict[Any, str]:
    """--max_memory JSON -> accelerate's form: GPU indexes as ints ({"0": "20GiB"} -> {0: "20GiB"}), "cpu" kept."""
    try:
        budget = json.loads(max_memory)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f'--max_memory is not valid JSON ({exc.msg}); give e.g. \'{{"0": "20GiB", "cpu": "64GiB"}}\''
        ) from None
    if not isinstance(budget, dict):
        raise ConfigError('--max_memory must be a JSON object of device -> size, e.g. {"0": "20GiB"}')
    return {int(k) if str(k).isdigit() else str(k): v for k, v in budget.items()}


_GGUF_LOAD = threading.Lock()


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """For the length of one GGUF load, memoize two pure functions of the `gguf` package that transformers
    calls over and over: it re-reads the file's metadata for the config, the tokenizer and the weights
    (GGUFReader, 5 times; seconds each for a 49k-token vocabulary) and rebuilds the tensor-name map for each of
    the model's ~400 modules (get_tensor_name_map). Loading SmolLM2-135M-Instruct (Q4_1) took 27 s of CPU
    without this and 11 s with it; the objects are the same ones transformers would build. Should
    transformers import these names differently, the load is only slower."""
    import gguf

    with _GGUF_LOAD:  # one patched load at a time, so each restores the true originals
        originals = {name: getattr(gguf, name) for name in ("GGUFReader", "get_tensor_name_map")}
        # GGUFReader maps the file read-only (mode "r"); transformers only reads fields and tensors from it.
        cached = {name: functools.lru_cache(maxsize=8)(fn) for name, fn in originals.items()}
        try:
            for name, fn in cached.items():
                setattr(gguf, name, fn)
            yield
        finally:
            for name, fn in originals.items():
                setattr(gguf, name, fn)


def _unloadable(model: str, exc: BaseException) -> ConfigError:
    hint = (
        " (check the hub id and revision, the network, and HF_TOKEN for gated models; or pass a local directory)"
        if not os.path.exists(os.path.expanduser(model))
        else ""
    )
    return ConfigError(f"cannot load {model}: {_first_line(exc)}{hint}")


def _gguf_architectures() -> str:
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:  # moved in another transformers release: the message still names the problem
        return "the architectures in its GGUF documentation"
    return ", ".join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))


def _gguf_common(source: GgufSource, revision: str | None, trust_remote_code: bool) -> dict[str, Any]:
    try:
        import gguf  # noqa: F401  (transformers reads GGUF through it)
    except ImportError:
        raise ConfigError(
            f"{source.path} is a GGUF checkpoint: reading it needs the gguf package; run {GGUF_EXTRA}"
        ) from None
    if source.is_local and not os.path.isfile(os.path.expanduser(source.path)):
        raise ConfigError(f"GGUF file {source.path} does not exist; pass --model path/to/model.gguf")
    return {"revision": revision, "trust_remote_code": trust_remote_code, "gguf_file": source.file_name}


def load_model(
    model: str,
    *,
    revision: str | None = None,
    torch_dtype: str | torch.dtype | None = None,
    device_map: str | None = None,
    max_model_len: int | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    quant_method: str | None = None,
    quant_bits: int | None = None,
    max_memory: str | None = None,
) -> LoadedModel:
    from swiftops.template.processor_loader import is_multimodal_model

    gguf = gguf_source(model)
    if gguf is not None:  # tokenizer, chat template and config all come from the file's metadata
        if quant_method:
            raise ConfigError("a GGUF checkpoint is dequantized on load; drop --quant_method")
        common, multimodal = _gguf_common(gguf, revision, trust_remote_code), False
        source = os.path.expanduser(gguf.location) if gguf.is_local else gguf.location
    else:
        source = check_model_source(model)
        common = {"revision": revision, "trust_remote_code": trust_remote_code}
        try:  # the first read of a hub id fetches it: a wrong id or no network is one line, not a trace
            multimodal = is_multimodal_model(source, **common)
        except OSError as exc:
            raise _unloadable(model, exc) from exc
    with _gguf_parsed_once() if gguf is not None else contextlib.nullcontext():
        return _load(
            model,
            source,
            common,
            multimodal,
            gguf is not None,
            torch_dtype=torch_dtype,
            device_map=device_map,
            max_model_len=max_model_len,
            attn_implementation=attn_implementation,
            quant_method=quant_method,
            quant_bits=quant_bits,
            max_memory=max_memory,
        )


def _load(
    model: str,
    source: str,
    common: dict[str, Any],
    multimodal: bool,
    is_gguf: bool,
    *,
    torch_dtype: str | torch.dtype | None,
    device_map: str | None,
    max_model_len: int | None,
    attn_implementation: str | None,
    quant_method: str | None,
    quant_bits: int | None,
    max_memory: str | None,
) -> LoadedModel:
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoTokenizer,
        GenerationConfig,
    )

    from swiftops.template.processor_loader import load_processor

    processor = None
    try:  # the first read of a hub id fetches it: a wrong id or no network is one line, not transformers' trace
        config = AutoConfig.from_pretrained(source, **common)
        if multimodal:  # the processor carries the tokenizer, the image/video processors and the chat template
            processor = load_processor(source, **common)
            tokenizer = processor.tokenizer
            if getattr(tokenizer, "chat_template", None) is None:
                tokenizer.chat_template = getattr(processor, "chat_template", None)
        else:
            tokenizer = AutoTokenizer.from_pretrained(source, **common)
    except OSError as exc:
        raise _unloadable(model, exc) from exc
    except ValueError as exc:
        if not is_gguf:
            raise
        # e.g. "GGUF model with architecture rwkv6 is not supported yet."
        raise ConfigError(
            f"cannot load {model}: {_first_line(exc)} Transformers reads GGUF files of "
            f"{_gguf_architectures()}; use the model's transformers checkpoint instead"
        ) from exc
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype(torch_dtype, device, config)
    kwargs: dict[str, Any] = {"dtype": dtype, **common}
    if is_gguf:  # spares transformers another parse of the file's metadata
        kwargs["config"] = config
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device_map:
        kwargs["device_map"] = device_map_arg(device_map)
    if max_memory:  # accelerate plans the split of device_map auto/balanced within these budgets
        if not device_map:
            raise ConfigError("--max_memory needs --device_map auto (or balanced) to split the model by it")
        kwargs["max_memory"] = parse_max_memory(max_memory)
    if quant_method == "bnb":
        from transformers import BitsAndBytesConfig

        bits = quant_bits or 4
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=bits == 4,
            load_in_8bit=bits == 8,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
        )
        # under torchrun each rank has set its own device: quantize onto that one, not GPU 0
        kwargs.setdefault("device_map", {"": torch.cuda.current_device()} if device.type == "cuda" else None)
    try:
        auto_class = AutoModelForImageTextToText if multimodal else AutoModelForCausalLM
        net = auto_class.from_pretrained(source, **kwargs)
    except ImportError as exc:  # a quantization kernel package (bitsandbytes, gptqmodel, autoawq...) is missing
        raise ConfigError(
            f"cannot load {model}: {_first_line(exc)} (install the package named above, e.g. "
            f"`pip install bitsandbytes` for bnb checkpoints)"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load {model} as a causal LM: {_first_line(exc)}") from exc
    if "device_map" not in kwargs or kwargs["device_map"] is None:
        net.to(device)  # type: ignore[arg-type]  # transformers wraps Module.to with functools.wraps; mypy misreads it
    else:
        device = next(net.parameters()).device
    net.eval()
    generation_config = None
    if not is_gguf:  # a GGUF file carries its special tokens in its metadata, which the config holds
        with contextlib.suppress(OSError):
            generation_config = GenerationConfig.from_pretrained(source, **common)
    if generation_config is None:
        generation_config = GenerationConfig.from_model_config(config)
    context = _context_length(config)
    if max_model_len and max_model_len > context:
        logger.warning("max_model_len %d exceeds the model's %d positions", max_model_len, context)
    return LoadedModel(net, tokenizer, generation_config, device, dtype, max_model_len or context, processor)
