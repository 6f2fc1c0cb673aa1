"""The one source of truth for configuration.

CLI flags (`swiftops infer | deploy | app`), `SWIFTOPS_*` environment variables, manifest fields
and the JSON schema are all generated from these models. Precedence: manifest < environment < CLI flag.
Every field has a description: it becomes the flag's help text and the schema's documentation.
"""
from __future__ import annotations

import json
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

BackendName = Literal["pt", "vllm", "lmdeploy"]
DType = Literal["auto", "float32", "float16", "bfloat16"]


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


class ModelSettings(_Section):
    model: Optional[str] = Field(None, description="Hub id or local path of the model (any transformers causal LM).")
    model_revision: Optional[str] = Field(None, description="Hub revision (branch, tag or commit) of the model.")
    gguf_file: Optional[str] = Field(
        None, description="GGUF file inside --model's directory or hub repo (transformers' spelling); "
                          "--model may also be the .gguf file itself. Dequantized to the compute dtype on load.")
    tokenizer: Optional[str] = Field(
        None, description="Tokenizer hub id or path when not the model's (vLLM backend): the base model's "
                          "for a GGUF checkpoint, which vLLM otherwise converts slowly.")
    adapters: dict[str, str] = Field(
        default_factory=dict,
        description="LoRA adapters as name=path (a bare path is named after its directory); several allowed.")
    torch_dtype: DType = Field("auto", description="Weights dtype: auto (the checkpoint's; float32 on CPU), "
                                                   "float32, float16 or bfloat16.")
    device_map: Optional[str] = Field(None, description="transformers device_map: auto, balanced, cpu, cuda:0 or a JSON map.")
    max_model_len: Optional[int] = Field(None, ge=16, description="Context length in tokens (prompt + output); "
                                                                 "default: the model's max_position_embeddings.")
    trust_remote_code: bool = Field(False, description="Allow model code shipped with the checkpoint to run.")
    merge_lora: bool = Field(False, description="Merge the single given adapter into the base weights at load time.")
    quant_method: Optional[Literal["bnb"]] = Field(
        None, description="Quantize the base model on load (bnb: bitsandbytes; QLoRA with adapters on top). "
                          "Pre-quantized checkpoints (GPTQ, AWQ, bnb, fp8) are detected from their config.")
    quant_bits: Optional[Literal[4, 8]] = Field(None, description="Bits for --quant_method bnb (4 or 8).")
    max_memory: Optional[str] = Field(
        None, description='Most memory per device for --device_map auto/balanced, as JSON: '
                          '{"0": "20GiB", "1": "20GiB", "cpu": "64GiB"} (GPU index or "cpu" -> size).')
    task_type: Optional[Literal["causal_lm", "embedding", "seq_cls", "reward", "prm"]] = Field(
        None, description="What the model does: causal_lm (chat/generate; VLMs too), embedding (/v1/embeddings), "
                          "seq_cls (class scores), reward (a score per conversation) or prm (a score per step); "
                          "unset: detected from the model's config.")

    @field_validator("adapters", mode="before")
    @classmethod
    def _adapters(cls, value: Any) -> dict[str, str]:
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
                raise ValueError(f"not valid JSON ({exc.msg}); give a JSON object like {{\"model.layers.0\": 0}}") from None
            if not isinstance(parsed, dict):
                raise ValueError("must be a JSON object (name -> device)")
        return value

    @field_validator("max_memory")
    @classmethod
    def _max_memory_needs_device_map(cls, value: Optional[str], info: ValidationInfo) -> Optional[str]:
        if value and not info.data.get("device_map"):  # device_map is declared (so validated) first
            raise ValueError("needs --device_map auto (or balanced): accelerate splits the model within these budgets")
        return value


class EngineSettings(_Section):
    infer_backend: BackendName = Field("pt", description="Inference backend: pt (swiftops' own), vllm or lmdeploy.")
    max_batch_size: Optional[int] = Field(
        None, ge=1, description="Most sequences decoded together (vLLM's max_num_seqs; default: 256 on a GPU, 32 on "
                                "CPU for the pt backend, the library's own default for vllm and lmdeploy).")
    max_num_batched_tokens: int = Field(2048, ge=16, description="Token budget of one prefill step (chunked prefill).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Share of GPU memory for weights and KV cache.")
    kv_cache_memory_gb: Optional[float] = Field(
        None, gt=0, description="KV cache size in GiB (default: from gpu_memory_utilization on GPU, 1 GiB on CPU).")
    block_size: int = Field(16, ge=1, description="Tokens per KV-cache block.")
    enforce_eager: bool = Field(False, description="Disable CUDA graphs for decode.")
    max_loras: int = Field(8, ge=1, description="LoRA adapters resident at once; the least recently used is unloaded.")
    max_lora_rank: int = Field(64, ge=1, description="Highest LoRA rank an adapter may have.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs each layer is split over (vllm, lmdeploy's tp).")
    pipeline_parallel_size: int = Field(1, ge=1, description="Stages the layers are split into, one GPU group each "
                                                             "(vllm).")
    data_parallel_size: int = Field(1, ge=1, description="Engine replicas, each on its own GPUs, that requests are "
                                                         "spread over (vllm, lmdeploy).")
    enable_prefix_caching: Optional[bool] = Field(
        None, description="Reuse the KV cache of a shared prompt prefix across requests (vllm, lmdeploy; "
                          "unset: the backend's default).")
    limit_mm_per_prompt: dict[str, int] = Field(
        default_factory=dict, description='Most media items per prompt by kind, e.g. {"image": 5, "video": 2} (vllm).')
    lmdeploy_backend: Optional[Literal["turbomind", "pytorch"]] = Field(
        None, description="LMDeploy engine: turbomind (default when the model supports it) or pytorch (needed for "
                          "LoRA adapters).")
    cache_max_entry_count: Optional[float] = Field(
        None, gt=0, le=1, description="LMDeploy: share of the GPU memory left after the weights that the KV cache "
                                      "takes (unset: LMDeploy's 0.8).")
    quant_policy: Literal[0, 4, 8] = Field(0, description="LMDeploy: KV cache quantization bits (0: off, 4 or 8).")
    vision_batch_size: int = Field(1, ge=1, description="LMDeploy: images encoded together by the vision model.")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments passed unchanged to the backend library's engine "
                                          "config (vLLM's AsyncEngineArgs, LMDeploy's *EngineConfig).")


class GenerationSettings(_Section):
    max_new_tokens: Optional[int] = Field(None, ge=1, description="Default cap on generated tokens per request.")
    temperature: Optional[float] = Field(None, ge=0, description="Default temperature (0: greedy; unset: the model's).")
    top_k: Optional[int] = Field(None, description="Default top-k.")
    top_p: Optional[float] = Field(None, gt=0, le=1, description="Default top-p.")
    repetition_penalty: Optional[float] = Field(None, gt=0, description="Default repetition penalty.")
    seed: Optional[int] = Field(None, description="Default sampling seed.")
    stop_words: list[str] = Field(default_factory=list, description="Strings that end generation (not returned).")
    logprobs: bool = Field(False, description="Return log-probabilities of generated tokens.")
    top_logprobs: Optional[int] = Field(None, ge=0, le=20, description="Number of alternatives per token with --logprobs.")
    system: Optional[str] = Field(None, description="Default system prompt (used when a conversation has none).")


class InferSettings(_Section):
    stream: Optional[bool] = Field(None, description="Stream tokens as they are generated (default: true "
                                                     "interactively, false for datasets).")
    val_dataset: list[str] = Field(default_factory=list,
                                   description="Local JSONL/JSON/CSV files to run (dataset mode); several allowed.")
    draw_boxes: Optional[str] = Field(None, description="Directory to save each answer's grounding boxes drawn on "
                                                        "the request's first image (Qwen2-VL / Qwen2.5-VL boxes).")
    result_path: Optional[str] = Field(None, description="JSONL file the results are appended to "
                                                         "(default: results/<model>-<time>.jsonl).")
    shard_index: Optional[int] = Field(
        None, ge=0, description="This process's shard of the dataset (rows i with i % num_shards == shard_index), "
                                "written to <result_path>.part-<index>-of-<num_shards>; default: $JOB_COMPLETION_INDEX "
                                "(a Kubernetes Indexed Job), else 0.")
    num_shards: Optional[int] = Field(
        None, ge=1, description="Number of dataset shards (one per Indexed Job pod); `swiftops merge-results` joins "
                                "their part files. Default 1.")
    nproc_per_node: Optional[int] = Field(
        None, ge=1, description="Processes (GPUs) answering the dataset in parallel on this machine: relaunches "
                                "itself under torchrun, one shard per rank, and rank 0 merges the parts. Default 1.")


class ServerSettings(_Section):
    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(8000, ge=1, le=65535, description="Port to listen on (an error if it is taken).")
    served_model_name: Optional[str] = Field(None, description="Model name clients use (default: the last part of --model).")
    api_key: Optional[str] = Field(None, description="Required bearer key: the key itself or a path to a file holding it "
                                                     "(a Kubernetes secret); SWIFTOPS_API_KEY also works.")
    max_concurrency: Optional[int] = Field(
        None, ge=1, description="Requests generating at once; more wait in the queue (default: the engine's "
                                "max_batch_size, 64 where the engine has none).")
    max_queue: int = Field(256, ge=0, description="Requests waiting beyond max_concurrency; more get 429.")
    max_logprobs: int = Field(20, ge=0, le=20, description="Highest top_logprobs a request may ask for.")
    shutdown_timeout: float = Field(30.0, ge=0, description="Seconds SIGTERM waits for in-flight requests.")
    keep_alive_timeout: float = Field(
        75.0, gt=0, description="Seconds an idle keep-alive connection stays open; longer than a load balancer's "
                                "idle timeout (often 60 s), so the server never closes a connection a client is "
                                "about to reuse.")
    metrics_require_key: bool = Field(False, description="Ask for the API key on /metrics too.")
    verbose: bool = Field(False, description="Log request and response bodies (media elided).")
    ui: bool = Field(False, description="Serve the chat web UI at / as well.")
    result_path: Optional[str] = Field(None, description="Append every finished request and response to this JSONL file.")
    max_sequences_per_request: Optional[int] = Field(
        None, ge=1, description="Most sequences (prompts x n) one request may ask for; more is a 400. Each request "
                                "counts its prompts x n against --max_concurrency / --max_queue. Default: the "
                                "smaller of --max_concurrency and --max_queue.")
    send_timeout: float = Field(
        60.0, gt=0, description="Seconds a response may wait for a client that stops reading (nginx's send_timeout); "
                                "then the connection is closed and its slot freed.")
    header_timeout: float = Field(
        30.0, gt=0, description="Seconds a client has to send a request's headers once it connects (or starts its "
                                "next request); slow or silent connections are closed.")
    split_special_tokens: bool = Field(
        True, description="Tokenize user, system and tool message text with special tokens split, so only the chat "
                          "template emits them (false: text like <|im_start|> in a message becomes the token).")
    max_media_bytes_decoded: int = Field(
        256 << 20, ge=1, description="Most bytes of decoded pixels (images and sampled video frames) one "
                                     "request may take, judged from image headers and video metadata before decoding.")
    max_images_per_prompt: int = Field(16, ge=0, description="Most images in one request.")
    max_videos_per_prompt: int = Field(2, ge=0, description="Most videos in one request.")
    media_workers: int = Field(2, ge=1, description="Threads fetching and decoding media (a pool of their "
                                                    "own, so slow media never delays text requests).")
    media_queue: int = Field(64, ge=0, description="Media requests waiting for a media worker; more get 429.")


class MediaSettings(_Section):
    """Limits on images, videos and audio. Unset fields fall back to ms-swift's environment variables
    (MAX_PIXELS, MIN_PIXELS, VIDEO_MAX_PIXELS, VIDEO_MIN_PIXELS, FPS, FPS_MAX_FRAMES, FPS_MIN_FRAMES),
    then to the model processor's defaults."""

    max_pixels: Optional[int] = Field(None, ge=1, description="Largest image size in pixels; bigger images are "
                                                              "resized (env MAX_PIXELS).")
    min_pixels: Optional[int] = Field(None, ge=1, description="Smallest image size in pixels (env MIN_PIXELS).")
    video_max_pixels: Optional[int] = Field(None, ge=1, description="Largest video frame size in pixels "
                                                                    "(env VIDEO_MAX_PIXELS).")
    video_min_pixels: Optional[int] = Field(None, ge=1, description="Smallest video frame size in pixels "
                                                                    "(env VIDEO_MIN_PIXELS).")
    fps: Optional[float] = Field(None, gt=0, description="Frames sampled per second of video (env FPS; default 2).")
    fps_max_frames: Optional[int] = Field(None, ge=1, description="Most frames taken from one video "
                                                                  "(env FPS_MAX_FRAMES; default 768).")
    fps_min_frames: Optional[int] = Field(None, ge=1, description="Fewest frames taken from one video "
                                                                  "(env FPS_MIN_FRAMES; default 4).")
    allow_local_media: bool = Field(False, description="Server: let clients name local file paths as media "
                                                       "(refused by default; the CLI and Python API always allow them).")
    allowed_media_domains: list[str] = Field(
        default_factory=list, description="Server: hosts (a name matches its subdomains too) whose media URLs may "
                                          "resolve to private, loopback or link-local addresses; others are refused.")
    media_timeout: float = Field(30.0, gt=0, description="Seconds to fetch one media URL (connect + read).")
    media_max_bytes: int = Field(64 << 20, ge=1, description="Largest media item in bytes (URL, base64 or file).")
