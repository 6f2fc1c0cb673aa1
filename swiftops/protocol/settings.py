"""The one source of truth for configuration.

CLI flags (`swiftops infer | deploy | app`), `SWIFTOPS_*` environment variables, manifest fields
and the JSON schema are all generated from these models. Precedence: manifest < environment < CLI flag.
Every field has a description: it becomes the flag's help text and the schema's documentation.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

# ms-swift's names for a backend: `transformers` is ms-swift >= 3.7's name for what 3.x (and swiftops) call pt.
BACKEND_VALUE_ALIASES = {"transformers": "pt"}
# Values of ms-swift flags that swiftops does not run, and what to use instead.
REFUSED_VALUES: dict[str, dict[str, str]] = {
    "infer_backend": {
        "sglang": "swiftops has no sglang backend; use --infer_backend vllm or lmdeploy for an "
        "accelerated engine (or pt, the default)"
    },
}


def _backend_name(value: Any) -> Any:
    if isinstance(value, str):
        if value in REFUSED_VALUES["infer_backend"]:
            raise ValueError(REFUSED_VALUES["infer_backend"][value])
        return BACKEND_VALUE_ALIASES.get(value, value)
    return value


BackendName = Annotated[Literal["pt", "vllm", "lmdeploy"], BeforeValidator(_backend_name)]
DType = Literal["auto", "float32", "float16", "bfloat16"]

# ms-swift (3.x and 4.x) flags that swiftops does not take, with the reason and what to do instead. The CLI and
# --config files refuse them with this line rather than "No such option".
REFUSED_SETTINGS: dict[str, str] = {
    "share": "swiftops app has no public share links (gradio's --share); serve on --server_name 0.0.0.0 and put "
    "it behind your own tunnel or ingress",
    "metric": "swiftops does not score results; the result file holds response and labels side by side for your "
    "own acc/rouge script",
    "ssl_keyfile": "swiftops serves plain HTTP; terminate TLS at a reverse proxy or the Kubernetes ingress",
    "ssl_certfile": "swiftops serves plain HTTP; terminate TLS at a reverse proxy or the Kubernetes ingress",
    "attn_impl": "the pt backend installs its own paged attention (vision towers keep sdpa); vllm and lmdeploy "
    "pick theirs; drop the flag",
    "truncation_strategy": "swiftops never cuts a prompt: one longer than --max_model_len (--max_length) is "
    "refused, as ms-swift's delete does (the one value taken); drop the flag, or shorten the input",
    "sglang_tp_size": "swiftops has no sglang backend; use --infer_backend vllm --tensor_parallel_size N",
    "sglang_context_length": "swiftops has no sglang backend; use --infer_backend vllm --max_model_len N",
    "sglang_mem_fraction_static": "swiftops has no sglang backend; use --infer_backend vllm --gpu_memory_utilization F",
}


# Refused settings whose value names what swiftops does anyway (ms-swift's default, which its scripts and saved
# configs spell out): taken and dropped instead of refused.
BEHAVIOUR_VALUES: dict[str, str] = {"truncation_strategy": "delete"}


def aliases(*names: str) -> AliasChoices:
    """A field's own name first (the JSON schema and --help show it), then other spellings users pass (ms-swift's
    vllm_*/lmdeploy_* names, older names): flags, SWIFTOPS_* variables, --config keys and manifests take them."""
    return AliasChoices(*names)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def parse_adapters(value: Any) -> dict[str, str]:
    """`name=path` items (a bare path is named after its directory) or a mapping, into {name: path}."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, str):
        value = [value]
    adapters: dict[str, str] = {}
    for item in value:
        name, sep, path = str(item).partition("=")
        if not sep:
            path = name
            name = path.rstrip("/").split("/")[-1] or path
        if not name or not path:
            raise ValueError(f"adapter {item!r}: expected name=path or a path")
        if name in adapters:
            raise ValueError(f"adapter name {name!r} is given twice; name them with name=path")
        adapters[name] = path
    return adapters


def unnamed_adapters(value: Any) -> list[str]:
    """Names parse_adapters gives to the items of `value` that are bare paths (no `name=`)."""
    if value is None or isinstance(value, dict):
        return []
    items = [value] if isinstance(value, str) else list(value)
    bare = [str(item) for item in items if "=" not in str(item)]
    return list(parse_adapters(bare)) if bare else []


class ModelSettings(_Section):
    model: str | None = Field(None, description="Hub id or local path of the model (any transformers causal LM).")
    model_revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of the model.")
    gguf_file: str | None = Field(
        None,
        description="GGUF file inside --model's directory or hub repo (transformers' spelling); "
        "--model may also be the .gguf file itself. Dequantized to the compute dtype on load.",
    )
    tokenizer: str | None = Field(
        None,
        description="Tokenizer hub id or path when not the model's (vLLM backend): the base model's "
        "for a GGUF checkpoint, which vLLM otherwise converts slowly.",
    )
    adapters: dict[str, str] = Field(
        default_factory=dict,
        validation_alias=aliases("adapters", "lora_modules"),
        description="LoRA adapters as name=path, several allowed. A bare path (as ms-swift takes it) is named "
        "after its directory and applied to every request that names no other adapter.",
    )
    default_adapter: str | None = Field(
        None,
        description="Name of the adapter applied to requests that name no adapter (the served model name "
        "included); set by a bare --adapters path. Unset: such requests get the base model.",
    )
    torch_dtype: DType = Field(
        "auto",
        validation_alias=aliases("torch_dtype", "dtype"),
        description="Weights dtype: auto (the checkpoint's; float32 on CPU), float32, float16 or bfloat16.",
    )
    device_map: str | None = Field(
        None, description="transformers device_map: auto, balanced, cpu, cuda:0 or a JSON map."
    )
    max_model_len: int | None = Field(
        None,
        ge=16,
        validation_alias=aliases(
            "max_model_len", "vllm_max_model_len", "lmdeploy_session_len", "session_len", "max_length"
        ),
        description="Context length in tokens (prompt + output); longer prompts are refused (ms-swift's "
        "--truncation_strategy delete); default: the model's max_position_embeddings.",
    )
    trust_remote_code: bool = Field(False, description="Allow model code shipped with the checkpoint to run.")
    merge_lora: bool = Field(False, description="Merge the single given adapter into the base weights at load time.")
    quant_method: Literal["bnb"] | None = Field(
        None,
        description="Quantize the base model on load (bnb: bitsandbytes; QLoRA with adapters on top). "
        "Pre-quantized checkpoints (GPTQ, AWQ, bnb, fp8) are detected from their config.",
    )
    quant_bits: Literal[4, 8] | None = Field(None, description="Bits for --quant_method bnb (4 or 8).")
    max_memory: str | None = Field(
        None,
        description="Most memory per device for --device_map auto/balanced, as JSON: "
        '{"0": "20GiB", "1": "20GiB", "cpu": "64GiB"} (GPU index or "cpu" -> size).',
    )
    task_type: Literal["causal_lm", "embedding", "seq_cls", "reward", "prm"] | None = Field(
        None,
        description="What the model does: causal_lm (chat/generate; VLMs too), embedding (/v1/embeddings), "
        "seq_cls (class scores), reward (a score per conversation) or prm (a score per step); "
        "unset: detected from the model's config.",
    )

    model_type: str | None = Field(
        None,
        description="ms-swift's model type (e.g. qwen2_5); accepted so ms-swift scripts run: swiftops reads "
        "the architecture from the checkpoint's config.json.",
    )
    template: str | None = Field(
        None,
        description="Chat template: a .jinja file (or a tokenizer_config.json holding chat_template) that "
        "replaces the checkpoint's; unset: the checkpoint's own template.",
    )
    use_chat_template: bool = Field(
        True,
        description="false: a conversation is sent as its messages' text without the chat template's role "
        "markers (ms-swift's flag for base models; pt backend).",
    )
    use_hf: bool | None = Field(
        None,
        description="Download models and adapters from Hugging Face (true) or ModelScope (false; needs "
        "`pip install modelscope`); unset: $USE_HF, else Hugging Face.",
    )
    load_args: bool = Field(
        True,
        description="Read the args.json that ms-swift writes next to a trained adapter or checkpoint: "
        "--adapters DIR alone then finds its base model, system prompt and template there.",
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_adapter_is_the_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("default_adapter") is None:
            raw = next((data[key] for key in ("adapters", "lora_modules") if key in data), None)
            bare = unnamed_adapters(raw)
            if len(bare) == 1:
                data = {**data, "default_adapter": bare[0]}
        return data

    @field_validator("adapters", mode="before")
    @classmethod
    def _adapters(cls, value: Any) -> dict[str, str]:
        if len(unnamed_adapters(value)) > 1:
            raise ValueError(
                "several adapters without a name: only one can apply to every request; name them "
                "name=path (requests pick one by name) and leave at most one bare path"
            )
        return parse_adapters(value)

    @field_validator("device_map", "max_memory", mode="before")
    @classmethod
    def _json_object_text(cls, value: Any) -> Any:
        """A mapping (from YAML or a manifest) becomes JSON text; text that looks like JSON must parse to an object."""
        if isinstance(value, dict):
            return json.dumps(value) if value else None  # a manifest's empty max_memory means "not set"
        if isinstance(value, str) and value.strip()[:1] in ("{", "["):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f'not valid JSON ({exc.msg}); give a JSON object like {{"model.layers.0": 0}}'
                ) from None
            if not isinstance(parsed, dict):
                raise ValueError("must be a JSON object (name -> device)")
        return value

    @field_validator("max_memory")
    @classmethod
    def _max_memory_needs_device_map(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value and not info.data.get("device_map"):  # device_map is declared (so validated) first
            raise ValueError("needs --device_map auto (or balanced): accelerate splits the model within these budgets")
        return value


class EngineSettings(_Section):
    infer_backend: BackendName = Field(
        "pt",
        description="Inference backend: pt (swiftops' own; ms-swift >= 3.7 calls it transformers, which is "
        "taken too), vllm or lmdeploy.",
    )
    max_batch_size: int | None = Field(
        None,
        ge=1,
        validation_alias=aliases("max_batch_size", "max_num_seqs", "vllm_max_num_seqs"),
        description="Most sequences decoded together (vLLM's max_num_seqs; default: 256 on a GPU, 32 on CPU for the "
        "pt backend, the library's own default for vllm and lmdeploy).",
    )
    max_num_batched_tokens: int | None = Field(
        None,
        ge=16,
        validation_alias=aliases("max_num_batched_tokens", "vllm_max_num_batched_tokens"),
        description="Token budget of one step: the most prompt tokens one forward prefills (chunked prefill). "
        "Default: 8192 on a GPU, 2048 on CPU for the pt backend, the library's own for vllm and lmdeploy.",
    )
    gpu_memory_utilization: float = Field(
        0.9,
        gt=0,
        le=1,
        validation_alias=aliases("gpu_memory_utilization", "vllm_gpu_memory_utilization"),
        description="Share of GPU memory for weights and KV cache.",
    )
    kv_cache_memory_gb: float | None = Field(
        None, gt=0, description="KV cache size in GiB (default: from gpu_memory_utilization on GPU, 1 GiB on CPU)."
    )
    block_size: int = Field(16, ge=1, description="Tokens per KV-cache block.")
    max_itl_ratio: float | None = Field(
        None,
        ge=0,
        description="pt on a GPU: keep a step that prefills new prompts beside streaming sequences within about this "
        "many times a decode step's time (timed on the step graphs at start-up), which bounds their inter-token "
        "latency; 0: no bound beyond max_num_batched_tokens. Default: 1.75 when serving (deploy, app), 0 for the "
        "Python API.",
    )
    enforce_eager: bool = Field(
        False,
        validation_alias=aliases("enforce_eager", "vllm_enforce_eager"),
        description="Disable CUDA graphs for decode.",
    )
    max_loras: int = Field(
        8,
        ge=1,
        validation_alias=aliases("max_loras", "vllm_max_loras"),
        description="LoRA adapters resident at once; the least recently used is unloaded.",
    )
    max_lora_rank: int = Field(
        64,
        ge=1,
        validation_alias=aliases("max_lora_rank", "vllm_max_lora_rank"),
        description="Highest LoRA rank an adapter may have.",
    )
    tensor_parallel_size: int = Field(
        1,
        ge=1,
        validation_alias=aliases("tensor_parallel_size", "vllm_tensor_parallel_size", "lmdeploy_tp", "tp"),
        description="GPUs each layer is split over (vllm, lmdeploy's tp).",
    )
    pipeline_parallel_size: int = Field(
        1,
        ge=1,
        validation_alias=aliases("pipeline_parallel_size", "vllm_pipeline_parallel_size"),
        description="Stages the layers are split into, one GPU group each (vllm).",
    )
    data_parallel_size: int = Field(
        1,
        ge=1,
        validation_alias=aliases("data_parallel_size", "vllm_data_parallel_size"),
        description="Engine replicas, each on its own GPUs, that requests are spread over (vllm, lmdeploy).",
    )
    enable_prefix_caching: bool | None = Field(
        None,
        validation_alias=aliases("enable_prefix_caching", "vllm_enable_prefix_caching"),
        description="Reuse the KV cache of a shared prompt prefix across requests (automatic prefix caching; "
        "unset: the backend's default: on for pt and vllm, off for lmdeploy).",
    )
    limit_mm_per_prompt: dict[str, int] = Field(
        default_factory=dict,
        validation_alias=aliases("limit_mm_per_prompt", "vllm_limit_mm_per_prompt"),
        description='Most media items per prompt by kind, e.g. {"image": 5, "video": 2} (vllm).',
    )
    lmdeploy_backend: Literal["turbomind", "pytorch"] | None = Field(
        None,
        description="LMDeploy engine: turbomind (default when the model supports it) or pytorch (needed for "
        "LoRA adapters).",
    )
    cache_max_entry_count: float | None = Field(
        None,
        gt=0,
        le=1,
        validation_alias=aliases("cache_max_entry_count", "lmdeploy_cache_max_entry_count"),
        description="LMDeploy: share of the GPU memory left after the weights that the KV cache takes "
        "(unset: LMDeploy's 0.8).",
    )
    quant_policy: Literal[0, 4, 8] = Field(
        0,
        validation_alias=aliases("quant_policy", "lmdeploy_quant_policy"),
        description="LMDeploy: KV cache quantization bits (0: off, 4 or 8).",
    )
    vision_batch_size: int = Field(
        1,
        ge=1,
        validation_alias=aliases("vision_batch_size", "lmdeploy_vision_batch_size"),
        description="LMDeploy: images encoded together by the vision model.",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra keyword arguments passed unchanged to the backend library's engine "
        "config (vLLM's AsyncEngineArgs, LMDeploy's *EngineConfig).",
    )

    @field_validator("max_itl_ratio")
    @classmethod
    def _ratio_above_one(cls, value: float | None) -> float | None:
        if value is not None and 0 < value <= 1:
            raise ValueError(
                "max_itl_ratio is a multiple of a decode step's time: 0 turns the bound off, otherwise give a "
                "value above 1, such as 1.75"
            )
        return value


class GenerationSettings(_Section):
    max_new_tokens: int | None = Field(None, ge=1, description="Default cap on generated tokens per request.")
    temperature: float | None = Field(None, ge=0, description="Default temperature (0: greedy; unset: the model's).")
    top_k: int | None = Field(None, description="Default top-k.")
    top_p: float | None = Field(None, gt=0, le=1, description="Default top-p.")
    repetition_penalty: float | None = Field(None, gt=0, description="Default repetition penalty.")
    seed: int | None = Field(None, description="Default sampling seed.")
    stop_words: list[str] = Field(default_factory=list, description="Strings that end generation (not returned).")
    logprobs: bool = Field(False, description="Return log-probabilities of generated tokens.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Number of alternatives per token with --logprobs.")
    system: str | None = Field(None, description="Default system prompt (used when a conversation has none).")
    num_beams: int = Field(
        1,
        ge=1,
        description="Beam search width (1: off); the pt backend runs beam requests "
        "through transformers' generate, one request at a time.",
    )


class InferSettings(_Section):
    stream: bool | None = Field(
        None, description="Stream tokens as they are generated (default: true interactively, false for datasets)."
    )
    val_dataset: list[str] = Field(
        default_factory=list,
        description="Datasets to answer (dataset mode), several allowed, as ms-swift writes them: "
        "NAME_OR_PATH[:subset][#N]: a local .jsonl/.json/.csv file, a folder of such files or a "
        "`datasets` save_to_disk folder, or a hub dataset id (needs `pip install datasets`); "
        "#N takes N rows at random (seeded by --data_seed).",
    )
    dataset: list[str] = Field(
        default_factory=list,
        description="Training datasets (same forms as --val_dataset) whose held-out share, "
        "--split_dataset_ratio, is answered when --val_dataset is not given (as swift infer does).",
    )
    split_dataset_ratio: float = Field(
        0.01, gt=0, le=1, description="Share of --dataset rows held out and answered (seeded by --data_seed)."
    )
    val_dataset_sample: int | None = Field(
        None, ge=1, description="Answer only this many rows, picked at random (seeded by --data_seed) in input order."
    )
    data_seed: int = Field(42, description="Seed of #N, --val_dataset_sample and --split_dataset_ratio sampling.")
    draw_boxes: str | None = Field(
        None,
        description="Directory to save each answer's grounding boxes drawn on "
        "the request's first image (Qwen2-VL / Qwen2.5-VL boxes).",
    )
    result_path: str | None = Field(
        None, description="JSONL file the results are appended to (default: results/<model>-<time>.jsonl)."
    )
    shard_index: int | None = Field(
        None,
        ge=0,
        description="This process's shard of the dataset (rows i with i % num_shards == shard_index), "
        "written to <result_path>.part-<index>-of-<num_shards>; default: $JOB_COMPLETION_INDEX "
        "(a Kubernetes Indexed Job), else 0.",
    )
    num_shards: int | None = Field(
        None,
        ge=1,
        description="Number of dataset shards (one per Indexed Job pod); `swiftops merge-results` joins "
        "their part files. Default 1.",
    )
    nproc_per_node: int | None = Field(
        None,
        ge=1,
        description="Processes (GPUs) answering the dataset in parallel on this machine: relaunches "
        "itself under torchrun, one shard per rank, and rank 0 merges the parts. Default 1.",
    )


class ServerSettings(_Section):
    host: str = Field(
        "0.0.0.0",
        validation_alias=aliases("host", "server_name"),
        description="Address to listen on (`swift app`'s --server_name).",
    )
    port: int = Field(
        8000,
        ge=1,
        le=65535,
        validation_alias=aliases("port", "server_port"),
        description="Port to listen on (an error if it is taken; `swift app`'s --server_port).",
    )
    served_model_name: str | None = Field(
        None, description="Model name clients use (default: the last part of --model)."
    )
    api_key: str | None = Field(
        None,
        description="Required bearer key: the key itself or a path to a file holding it "
        "(a Kubernetes secret); SWIFTOPS_API_KEY also works.",
    )
    max_concurrency: int | None = Field(
        None,
        ge=1,
        description="Requests generating at once; more wait in the queue (default: the engine's "
        "max_batch_size, 64 where the engine has none).",
    )
    max_queue: int = Field(256, ge=0, description="Requests waiting beyond max_concurrency; more get 429.")
    api_server_count: int | None = Field(
        None,
        ge=1,
        le=64,
        description="API-server processes in front of the engine process, sharing the port, the limits and "
        "/metrics (HTTP, streaming and detokenization spread over them, as vLLM's --api-server-count). Default: "
        "one per 8 usable cores, 1 to 4. The pt engine of a text model only; other engines serve from one process.",
    )
    max_logprobs: int = Field(20, ge=0, le=20, description="Highest top_logprobs a request may ask for.")
    shutdown_timeout: float = Field(30.0, ge=0, description="Seconds SIGTERM waits for in-flight requests.")
    keep_alive_timeout: float = Field(
        75.0,
        gt=0,
        description="Seconds an idle keep-alive connection stays open; longer than a load balancer's "
        "idle timeout (often 60 s), so the server never closes a connection a client is "
        "about to reuse.",
    )
    metrics_require_key: bool = Field(False, description="Ask for the API key on /metrics too.")
    verbose: bool = Field(False, description="Log request and response bodies (media elided).")
    ui: bool = Field(False, description="Serve the chat web UI at / as well.")
    studio_title: str | None = Field(
        None, description="Title of the chat page (`swift app`'s --studio_title; default: swiftops)."
    )
    lang: Literal["en", "zh"] = Field(
        "en", description="Language of the chat page: en (English) or zh (Chinese), as `swift app --lang`."
    )
    result_path: str | None = Field(None, description="Append every finished request and response to this JSONL file.")
    max_sequences_per_request: int | None = Field(
        None,
        ge=1,
        description="Most sequences (prompts x n) one request may ask for; more is a 400. Each request "
        "counts its prompts x n against --max_concurrency / --max_queue. Default: the "
        "smaller of --max_concurrency and --max_queue.",
    )
    send_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds a response may wait for a client that stops reading (nginx's send_timeout); "
        "then the connection is closed and its slot freed.",
    )
    header_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a client has to send a request's headers once it connects (or starts its "
        "next request); slow or silent connections are closed.",
    )
    split_special_tokens: bool = Field(
        True,
        description="Tokenize user, system and tool message text with special tokens split, so only the chat "
        "template emits them (false: text like <|im_start|> in a message becomes the token).",
    )
    max_media_bytes_decoded: int = Field(
        256 << 20,
        ge=1,
        description="Most bytes of decoded pixels (images and sampled video frames) one "
        "request may take, judged from image headers and video metadata before decoding.",
    )
    max_images_per_prompt: int = Field(16, ge=0, description="Most images in one request.")
    max_videos_per_prompt: int = Field(2, ge=0, description="Most videos in one request.")
    media_workers: int = Field(
        2,
        ge=1,
        description="Threads fetching and decoding media (a pool of their "
        "own, so slow media never delays text requests).",
    )
    media_queue: int = Field(64, ge=0, description="Media requests waiting for a media worker; more get 429.")
    log_interval: float | None = Field(
        None,
        le=0,
        description="ms-swift's seconds between statistics log lines; swiftops never logs them (see "
        "/metrics), so only -1 or 0 (off, as ms-swift's demos pass it) is taken.",
    )

    @field_validator("log_interval", mode="before")
    @classmethod
    def _no_stats_log(cls, value: Any) -> Any:
        try:
            positive = value is not None and float(value) > 0
        except (TypeError, ValueError):
            return value  # not a number: pydantic says so
        if positive:
            raise ValueError(
                "swiftops exports its statistics at /metrics (Prometheus) instead of logging them "
                "every N seconds; pass -1 or drop the flag"
            )
        return value


class MediaSettings(_Section):
    """Limits on images, videos and audio. Unset fields fall back to ms-swift's environment variables
    (MAX_PIXELS, MIN_PIXELS, VIDEO_MAX_PIXELS, VIDEO_MIN_PIXELS, FPS, FPS_MAX_FRAMES, FPS_MIN_FRAMES),
    then to the model processor's defaults."""

    max_pixels: int | None = Field(
        None, ge=1, description="Largest image size in pixels; bigger images are resized (env MAX_PIXELS)."
    )
    min_pixels: int | None = Field(None, ge=1, description="Smallest image size in pixels (env MIN_PIXELS).")
    video_max_pixels: int | None = Field(
        None, ge=1, description="Largest video frame size in pixels (env VIDEO_MAX_PIXELS)."
    )
    video_min_pixels: int | None = Field(
        None, ge=1, description="Smallest video frame size in pixels (env VIDEO_MIN_PIXELS)."
    )
    fps: float | None = Field(None, gt=0, description="Frames sampled per second of video (env FPS; default 2).")
    fps_max_frames: int | None = Field(
        None, ge=1, description="Most frames taken from one video (env FPS_MAX_FRAMES; default 768)."
    )
    fps_min_frames: int | None = Field(
        None, ge=1, description="Fewest frames taken from one video (env FPS_MIN_FRAMES; default 4)."
    )
    allow_local_media: bool = Field(
        False,
        description="Server: let clients name local file paths as media "
        "(refused by default; the CLI and Python API always allow them).",
    )
    allowed_media_domains: list[str] = Field(
        default_factory=list,
        description="Server: hosts (a name matches its subdomains too) whose media URLs may "
        "resolve to private, loopback or link-local addresses; others are refused.",
    )
    media_timeout: float = Field(30.0, gt=0, description="Seconds to fetch one media URL (connect + read).")
    media_max_bytes: int = Field(64 << 20, ge=1, description="Largest media item in bytes (URL, base64 or file).")
