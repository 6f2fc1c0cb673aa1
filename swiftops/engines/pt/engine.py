"""`PtEngine`: swiftops' own backend on transformers models, with continuous batching and a paged KV cache."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, cast

import torch

from swiftops.engines.base import InferEngine
from swiftops.engines.engine_options import split_options
from swiftops.engines.gc_heap import freeze_startup_heap, release_heap
from swiftops.engines.outputs import OutputChannel, SequenceOutput, merge_outputs
from swiftops.engines.prompt_checks import check_logit_token_ids, check_prompt_length, check_streamable, check_text_only
from swiftops.engines.pt.attention import ATTN_IMPLEMENTATION, register, triton_available
from swiftops.engines.pt.block_manager import BlockManager
from swiftops.engines.pt.checkpoint import LoadedModel, load_model
from swiftops.engines.pt.core import EngineCore
from swiftops.engines.pt.cpu_decode import LeanDecoder, lean_decoder
from swiftops.engines.pt.cuda_graphs import CudaGraphDecoder, can_use_graphs
from swiftops.engines.pt.fused_qkv import fuse_qkv_projections
from swiftops.engines.pt.guided_decoding import GrammarCompiler
from swiftops.engines.pt.kv_cache import CacheShape, PagedKVCache
from swiftops.engines.pt.lora import LoraManager, merge_adapter
from swiftops.engines.pt.mixed_graphs import BUCKET_STEP, CudaGraphMixedSteps, mixed_steps_agree
from swiftops.engines.pt.mm_prefill import uses_mrope
from swiftops.engines.pt.model_runner import FallbackRunner, PagedRunner, paged_path_agrees
from swiftops.engines.pt.prefix_hash import media_key, prompt_block_hashes
from swiftops.engines.pt.request_plan import plan_request
from swiftops.engines.pt.scheduler import Scheduler
from swiftops.engines.pt.sequence import AsyncSink, SamplingParams, Sequence
from swiftops.engines.pt.step_budget import SERVING_ITL_RATIO, measure_bound
from swiftops.engines.response_builder import collect_response, stream_response
from swiftops.media.limits import MediaLimits
from swiftops.media.policy import MediaPolicy
from swiftops.media.worker_pools import media_pool, text_pool, tokenize_off_loop
from swiftops.protocol import (
    AdapterRequest,
    BadRequestError,
    ConfigError,
    EngineError,
    InferRequest,
    ModelNotFoundError,
    RequestConfig,
    UnsupportedError,
)
from swiftops.protocol.sampling import effective_config, model_sampling_defaults
from swiftops.protocol.settings import (
    EngineSettings,
    GenerationSettings,
    MediaSettings,
    ModelSettings,
)
from swiftops.protocol.structured_output import OutputConstraint, output_constraint
from swiftops.template.chat_template import encode_prompt
from swiftops.template.multimodal import MultimodalEncoder
from swiftops.template.template import GENERATION_TEMPLATE
from swiftops.template.template_file import read_chat_template

logger = logging.getLogger(__name__)

# The settings the pt engine uses (besides every GenerationSettings field, its sampling defaults); a keyword naming
# another backend's setting (tensor_parallel_size, quant_policy, ...) is refused rather than ignored.
PT_SETTINGS = frozenset(
    {
        *GenerationSettings.model_fields,
        "model",
        "adapters",
        "default_adapter",
        "torch_dtype",
        "device_map",
        "max_model_len",
        "model_revision",
        "trust_remote_code",
        "merge_lora",
        "quant_method",
        "quant_bits",
        "max_memory",
        "task_type",
        "template",
        "use_chat_template",
        "model_type",  # ms-swift's: accepted, the architecture comes from config.json
        "infer_backend",
        "max_batch_size",
        "max_num_batched_tokens",
        "gpu_memory_utilization",
        "kv_cache_memory_gb",
        "block_size",
        "max_itl_ratio",
        "enforce_eager",
        "max_loras",
        "max_lora_rank",
        "enable_prefix_caching",
        "limit_mm_per_prompt",
    }
)
_CPU_CACHE_BYTES = 1 << 30  # default KV cache on CPU: enough for tests and demos without hogging RAM
# Prompts up to this long have their prefix-cache block hashes computed where they are prepared (tens of
# microseconds): a worker-thread hop costs more, and under a burst of arrivals every hop is a GIL hand-off that
# the engine thread waits behind before it can launch its next step.
_INLINE_HASH_TOKENS = 512


@dataclasses.dataclass
class PreparedRequest:
    """A checked request, ready to launch: its prompt ids, resolved sampling settings and adapter."""

    prompt_ids: list[int]
    config: RequestConfig  # with every default applied (swiftops.protocol.sampling)
    params: SamplingParams
    adapter: str | None
    name: str  # the model name its responses carry
    mm_inputs: Any
    n: int
    compiled: Any = None  # (xgrammar's compiled grammar, the constraint) of an output constraint
    media: Any = None  # the media's key in the prefix cache
    salt: bytes = b""  # the adapter's digest: prefix-cache blocks are per adapter
    hashes: list[bytes] = dataclasses.field(default_factory=list)  # the prompt's block hashes
    beams: dict[str, Any] | None = None  # transformers' generate() arguments of a beam search (RequestPlan.beams)
    images_size: bool = False  # the response carries the images' sizes (return_details)


def _mixed_graphs_wanted() -> bool:
    """Mixed prefill/decode steps replay CUDA graphs wherever decode does (on an H100: the 0.5B shared-prefix
    workload 1.59x, serving at 128 clients 1.16x the eager prefill's throughput, benchmarks/RESULTS.md);
    SWIFTOPS_PT_MIXED_GRAPHS=0 runs them eagerly, as --enforce_eager does every step."""
    return os.environ.get("SWIFTOPS_PT_MIXED_GRAPHS", "1") != "0"


def _cache_shape(model: Any, dtype: torch.dtype) -> CacheShape:
    text = model.config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return CacheShape(text.num_hidden_layers, getattr(text, "num_key_value_heads", None) or heads, head_dim, dtype)


def _vision_on_sdpa(model: Any) -> None:
    """Paged attention is for the language model; vision towers keep transformers' sdpa."""
    config = model.config
    routes: dict[str, Any] = {"": ATTN_IMPLEMENTATION}
    for key in getattr(config, "sub_configs", {}):
        routes[key] = ATTN_IMPLEMENTATION if key == "text_config" else "sdpa"
    model.set_attn_implementation(routes)


class PtEngine(InferEngine):
    """Runs any transformers causal LM: `PtEngine("Qwen/Qwen2.5-0.5B-Instruct")`.

    `adapters`: {name: path}, or ms-swift's list of paths / `name=path` items; a bare path applies to every
    request that names no adapter (`default_adapter` picks one by name). An embedding, reward or classifier
    checkpoint gets its own engine (PtEmbeddingEngine, PtClassifierEngine), as in ms-swift."""

    # Known once the model is loaded (the interface allows None for backends that do not know them).
    max_model_len: int
    max_batch_size: int

    def __new__(cls, model: Any = None, *args: Any, task_type: str | None = None, **kwargs: Any) -> Any:
        if cls is PtEngine and isinstance(model, str) and model:
            from swiftops.engines.pt.task import model_task, task_engine_class

            task = model_task(model, task_type)
            other = task_engine_class(task)
            if other is not None:  # not a PtEngine, so Python skips PtEngine.__init__
                if args or kwargs.get("adapters"):
                    raise ConfigError(f"{model} is a {task} model: LoRA adapters are served on causal LMs only")
                return other(model, task_type=task, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        model: str,
        adapters: dict[str, str] | list[str] | str | None = None,
        *,
        generation: GenerationSettings | None = None,
        media: MediaSettings | None = None,
        media_policy: MediaPolicy | None = None,
        served_model_name: str | None = None,
        runner: str | None = None,
        enable_lora: bool = False,
        attn_impl: str | None = None,
        **options: Any,
    ) -> None:
        """`options`: the settings' field names (`max_batch_size`, `torch_dtype` (a name or a torch.dtype),
        `max_model_len`, `temperature`, ...: `swiftops infer --help`), validated as the CLI validates its flags.
        `generation` gives the sampling defaults as one object (keywords like `temperature` override it);
        `runner` forces the "paged" or "fallback" runner; `enable_lora` makes room for adapters added by path."""
        if attn_impl:  # ms-swift's flash_attention_2/sdpa choice: the pt backend always runs its paged attention
            logger.info(
                "attn_impl=%s: the pt backend runs its own paged attention (vision towers keep sdpa)", attn_impl
            )
        model_settings, engine_settings, defaults = split_options(
            {"model": model, "adapters": adapters, **options}, "PtEngine", PT_SETTINGS
        )
        if generation is not None:
            defaults = generation.model_copy(update=defaults.model_dump(exclude_unset=True))
        self._setup(
            model_settings, engine_settings, defaults, media, media_policy, served_model_name, runner, enable_lora
        )

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
    ) -> PtEngine:
        """`serving`: requests come from network clients, so media follow the server's policy (no local paths, no
        private addresses unless allowed); otherwise the user's own files are read."""
        media = media or MediaSettings()
        policy = MediaPolicy.for_server(media) if serving else MediaPolicy.permissive(media)
        if serving and engine.max_itl_ratio is None:  # streams are served: even them out unless told otherwise
            engine = engine.model_copy(update={"max_itl_ratio": SERVING_ITL_RATIO})
        self = cls.__new__(cls)
        self._setup(model, engine, generation or GenerationSettings(), media, policy, served_model_name, None, False)
        return self

    def _setup(
        self,
        model: ModelSettings,
        engine: EngineSettings,
        generation: GenerationSettings,
        media: MediaSettings | None,
        media_policy: MediaPolicy | None,
        served_model_name: str | None,
        runner: str | None,
        enable_lora: bool,
    ) -> None:
        register()
        self.generation = generation
        path = model.model or ""
        adapters, self.default_adapter = dict(model.adapters), model.default_adapter
        if self.default_adapter is not None and self.default_adapter not in adapters:
            raise ConfigError(
                f"default_adapter {self.default_adapter!r} is not among the adapters ({', '.join(adapters) or 'none'})",
                param="default_adapter",
            )
        loaded = load_model(
            path,
            revision=model.model_revision,
            torch_dtype=model.torch_dtype,
            device_map=model.device_map,
            max_model_len=model.max_model_len,
            trust_remote_code=model.trust_remote_code,
            attn_implementation=ATTN_IMPLEMENTATION,
            quant_method=model.quant_method,
            quant_bits=model.quant_bits,
            max_memory=model.max_memory,
        )
        self.encoder: MultimodalEncoder | None = None
        if loaded.processor is not None:
            _vision_on_sdpa(loaded.model)
            self.encoder = MultimodalEncoder(
                loaded.processor,
                limits=MediaLimits.resolve(media),
                policy=media_policy or MediaPolicy.permissive(media),
                limit_mm_per_prompt=engine.limit_mm_per_prompt or None,
                default_system=self.generation.system,
            )
        if model.merge_lora and adapters:
            if len(adapters) != 1:
                raise ConfigError(
                    "--merge_lora true merges exactly one adapter; pass one, or drop --merge_lora "
                    "to serve several side by side"
                )
            loaded.model = merge_adapter(loaded.model, next(iter(adapters.values())))
            loaded.model.set_attn_implementation(ATTN_IMPLEMENTATION)
            if loaded.processor is not None:
                _vision_on_sdpa(loaded.model)
            adapters, self.default_adapter = {}, None  # the merged weights are the adapter
        template, use_chat_template = model.template, model.use_chat_template
        if template or not use_chat_template:
            # use_chat_template=False (ms-swift's flag for base models): the messages' text, no role markers.
            # (use_chat_template on: this branch runs for a --template, so template is set)
            loaded.tokenizer.chat_template = (
                read_chat_template(cast(str, template)) if use_chat_template else GENERATION_TEMPLATE
            )
            if loaded.processor is not None:
                loaded.processor.chat_template = loaded.tokenizer.chat_template
        max_loras, max_lora_rank = engine.max_loras, engine.max_lora_rank
        self.lora = (
            LoraManager(loaded.model, adapters, max_loras, max_lora_rank, path) if adapters or enable_lora else None
        )
        self._lora_limits, self._model_source = (max_loras, max_lora_rank), path
        self._loaded = loaded
        self._model_defaults = model_sampling_defaults(loaded.generation_config)
        self.tokenizer = loaded.tokenizer
        self.model = loaded.model
        self.max_model_len = loaded.max_model_len
        self.model_name = served_model_name or os.path.basename(os.path.normpath(path))
        # vLLM's and LMDeploy's range on a GPU, where a step of 256 sequences costs little more than one of 32;
        # on CPU every sequence of the batch costs its own compute, so a small batch keeps latency sane.
        max_batch_size = engine.max_batch_size or (256 if loaded.device.type == "cuda" else 32)
        self.max_batch_size = max_batch_size
        # A GPU prefills long prompts faster in large steps: on an H100 the 7B shape's 16 x 16,384-token workload
        # made 367 tok/s with 8,192-token steps against 351 with 2,048 (benchmarks/RESULTS.md, twelfth session);
        # LMDeploy's PyTorch engine prefills 8,192 tokens a step by default too. The server's steps beside
        # streaming sequences stay short through --max_itl_ratio whatever the budget. On CPU a step's time grows
        # with its tokens, and shorter steps keep decoding sequences moving.
        max_num_batched_tokens = engine.max_num_batched_tokens or (8192 if loaded.device.type == "cuda" else 2048)
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_itl_ratio = engine.max_itl_ratio or 0.0
        self._eos = self._eos_ids(loaded)
        self.prefix_caching = False  # set by _start_core: on by default wherever the paged runner runs
        # The logits' width (lm_head rows), which may be padded beyond the tokenizer's vocabulary.
        self._vocab_size = loaded.model.config.get_text_config().vocab_size
        self._grammars = GrammarCompiler(loaded.tokenizer, self._vocab_size, self._eos)
        self._core: EngineCore | None = self._start_core(  # None once closed
            loaded,
            runner,
            engine.block_size,
            engine.gpu_memory_utilization,
            engine.kv_cache_memory_gb,
            max_batch_size,
            max_num_batched_tokens,
            engine.enforce_eager,
            engine.enable_prefix_caching is not False,
            self.max_itl_ratio,
        )
        # The weights, graphs and libraries now live as long as the engine: no full collection should walk them
        # again (swiftops.engines.gc_heap; close() undoes it).
        freeze_startup_heap()

    def _start_core(
        self,
        loaded: LoadedModel,
        runner: str | None,
        block_size: int,
        utilization: float,
        cache_gb: float | None,
        max_batch_size: int,
        max_num_batched_tokens: int,
        enforce_eager: bool,
        prefix_caching: bool,
        itl_ratio: float,
    ) -> EngineCore:
        """The KV cache, the fast or fallback runner (by the self-check), CUDA graphs, and the engine thread."""
        shape = _cache_shape(loaded.model, loaded.dtype)
        num_blocks = self._num_blocks(
            loaded, shape, block_size, utilization, cache_gb, max_batch_size, max_num_batched_tokens
        )
        cache = PagedKVCache(shape, num_blocks, block_size, loaded.device)
        blocks = BlockManager(num_blocks, block_size, max_batch_size, self.max_model_len, loaded.device)
        choice = runner or os.environ.get("SWIFTOPS_PT_RUNNER")
        self.fused_kernels: dict[str, int] = {}
        # A device_map over several devices (or GPU and CPU) leaves some modules' weights off the GPU, where a
        # Triton kernel would read them through a host pointer: those models keep their modules' own forwards.
        # (accelerate's offloading hooks wrap those modules' forwards too, which a fused forward would bypass)
        split = len({str(d) for d in (getattr(loaded.model, "hf_device_map", None) or {}).values()}) > 1
        fused_qkv = [] if split else fuse_qkv_projections(loaded.model)
        if fused_qkv:
            self.fused_kernels["qkv"] = len(fused_qkv)
        if choice != "fallback" and loaded.device.type == "cuda" and triton_available(loaded.device) and not split:
            from swiftops.engines.pt.fused_mlp import fuse_gated_mlps
            from swiftops.engines.pt.fused_norm import fuse_rms_norms
            from swiftops.engines.pt.fused_rotary import fuse_rotary

            self.fused_kernels.update(
                rms_norm=fuse_rms_norms(loaded.model),
                gated_mlp=fuse_gated_mlps(loaded.model),
                rotary=fuse_rotary(loaded.model),
            )
            logger.info(
                "pt engine: Triton kernels replace %s (modules, or modeling modules for rotary)", self.fused_kernels
            )
        elif loaded.device.type == "cpu":
            from swiftops.engines.pt.cpu_linears import pack_linears

            self.fused_kernels["packed_linear"] = pack_linears(loaded.model, fused_qkv)
        agrees, self.paged_check_error = (
            (True, None)
            if choice in ("fallback", "paged")
            else paged_path_agrees(loaded.model, cache, blocks, loaded.device, loaded.tokenizer.vocab_size)
        )
        if choice == "fallback" or not agrees:
            logger.warning("pt engine: using the fallback runner (one sequence per forward) for %s", self.model_name)
            loaded.model.set_attn_implementation("sdpa")
            run: FallbackRunner | PagedRunner = FallbackRunner(loaded.model, loaded.device, self.lora)
            scheduler = Scheduler(None, max_batch_size, max_num_batched_tokens, self._admit_lora)
            del cache, blocks
        else:
            graphs = None
            if can_use_graphs(loaded.device, enforce_eager):
                graphs = CudaGraphDecoder(loaded.model, cache, blocks, loaded.device, max_batch_size, self.lora)
                try:
                    graphs.capture()
                except Exception as exc:
                    logger.warning(
                        "pt engine: CUDA graphs unavailable for this model (%s: %s); decoding eagerly",
                        type(exc).__name__,
                        str(exc).splitlines()[0] if str(exc) else "",
                    )
                    graphs = None
                    torch.cuda.synchronize(loaded.device)
            scheduler = Scheduler(blocks, max_batch_size, max_num_batched_tokens, self._admit_lora)
            mixed = None
            if _mixed_graphs_wanted() and graphs is not None and self.lora is None and not uses_mrope(loaded.model):
                mixed = self._mixed_graphs(loaded, cache, blocks, graphs, max_batch_size, scheduler.max_step_tokens)
            if itl_ratio and mixed is not None and graphs is not None:
                # Timed on the mixed-step graphs; without them (LoRA, M-RoPE, eager) steps keep the token budget.
                scheduler.prefill_bound = measure_bound(mixed, itl_ratio, BUCKET_STEP, graphs.buckets)
            run = PagedRunner(loaded.model, cache, blocks, loaded.device, graphs, self.lora, mixed)
            if loaded.device.type == "cpu" and not run.use_triton and self.lora is None and not run.mrope:
                run.lean = self._checked_lean_decoder(loaded, cache, blocks)
            # On after the self-check, whose blocks hold a throwaway prompt. The fallback runner keeps per-sequence
            # caches and shares nothing.
            blocks.prefix_caching = self.prefix_caching = prefix_caching
            self.kv_cache = cache
            self.block_manager = blocks
        self.runner_name = run.name
        self.cuda_graphs = isinstance(run, PagedRunner) and run.graphs is not None
        logger.info(
            "pt engine ready: %s on %s (%s), runner=%s, cuda_graphs=%s, max_model_len=%d, "
            "max_batch_size=%d, kv_cache_blocks=%d, prefix_caching=%s",
            self.model_name,
            loaded.device,
            loaded.dtype,
            run.name,
            self.cuda_graphs,
            self.max_model_len,
            max_batch_size,
            num_blocks,
            self.prefix_caching,
        )
        return EngineCore(run, scheduler, loaded.tokenizer, self._eos, self.max_model_len, loaded.device)

    def _checked_lean_decoder(
        self, loaded: LoadedModel, cache: PagedKVCache, blocks: BlockManager
    ) -> LeanDecoder | None:
        """The CPU decode forward without transformers' glue, kept only if it passes the paged path's self-check."""
        lean = lean_decoder(loaded.model)
        if lean is None:
            return None
        agrees, error = paged_path_agrees(loaded.model, cache, blocks, loaded.device, loaded.tokenizer.vocab_size, lean)
        if not agrees:
            logger.warning("pt engine: decode steps keep the model's forward (the lean decoder's error: %s)", error)
            return None
        self.fused_kernels["lean_decode"] = len(lean.layers)
        return lean

    @staticmethod
    def _mixed_graphs(
        loaded: LoadedModel,
        cache: PagedKVCache,
        blocks: BlockManager,
        graphs: CudaGraphDecoder,
        max_batch_size: int,
        max_tokens: int,
    ) -> CudaGraphMixedSteps | None:
        """Mixed prefill/decode steps as CUDA graphs in the decode graphs' pool, kept only if a captured step
        reproduces the eager one (the start-up check); otherwise those steps run eagerly."""
        mixed = CudaGraphMixedSteps(loaded.model, cache, blocks, loaded.device, max_batch_size, max_tokens)
        try:
            mixed.capture(graphs.pool)
            agrees, error = mixed_steps_agree(loaded.model, cache, blocks, loaded.device, mixed)
        except Exception as exc:
            agrees, error = False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        torch.cuda.synchronize(loaded.device)
        if not agrees:
            logger.warning("pt engine: mixed prefill/decode steps run eagerly (CUDA graphs: %s)", error)
            return None
        return mixed

    def _admit_lora(self, seq: Sequence, running: list[Sequence]) -> bool:
        """Scheduler hook (engine thread): a sequence runs once its adapter holds a slot."""
        if seq.adapter is None or self.lora is None:
            return True
        slot = self.lora.acquire(seq.adapter, {s.adapter for s in running if s.adapter})
        if slot is None:
            return False  # every slot serves a running sequence: wait for one to finish
        seq.lora_slot = slot
        return True

    @property
    def adapter_names(self) -> list[str]:
        return self.lora.names if self.lora is not None else []

    @property
    def processor(self) -> Any:
        return self._loaded.processor or self.tokenizer

    # ---- set-up helpers ------------------------------------------------------------------------
    @staticmethod
    def _eos_ids(loaded: LoadedModel) -> set[int]:
        ids: set[int] = set()
        for source in (loaded.generation_config.eos_token_id, loaded.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(int(i) for i in source)
        return ids

    @staticmethod
    def _num_blocks(
        loaded: LoadedModel,
        shape: CacheShape,
        block_size: int,
        utilization: float,
        cache_gb: float | None,
        max_batch_size: int,
        max_num_batched_tokens: int,
    ) -> int:
        if cache_gb:
            budget = int(cache_gb * (1 << 30))
        elif loaded.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(loaded.device)
            used = total - free
            # Leave room, on top of the weights already loaded, for what is allocated after the cache: the
            # activations of one eager prefill step (at least 1 GiB), the graphs' pool (the decode graphs' logits
            # and hidden states of the largest batch; the mixed-step graphs' activations of the largest step and
            # their logits, in the pool and in the buffer they share) and the sampler's working set (a few float32
            # copies of the batch's logits).
            text = loaded.model.config.get_text_config()
            vocab, hidden = text.vocab_size, text.hidden_size
            intermediate = getattr(text, "intermediate_size", None) or 4 * hidden
            step_tokens = Scheduler(None, max_batch_size, max_num_batched_tokens).max_step_tokens
            activations = step_tokens * (hidden * 12 + intermediate * 6)  # one step's, in bytes (bf16)
            eager = 1 << 30
            graphs = max_batch_size * (vocab * 2 + hidden * 64)
            if _mixed_graphs_wanted():
                graphs += activations + 2 * max_batch_size * vocab * 2
                # the decode rows' key segments, float32 partial outputs (triton_attention._ROW_SPLITS of them)
                graphs += 8 * max_batch_size * text.num_attention_heads * shape.head_dim * 4
            else:  # every prefill step runs eagerly, at up to the whole step budget
                eager = max(eager, activations)
            sampler = 4 * max_batch_size * vocab * 4
            budget = int(total * utilization) - used - eager - graphs - sampler
            if budget <= 0:
                raise UnsupportedError(
                    f"no GPU memory left for the KV cache at gpu_memory_utilization={utilization}; "
                    "raise it or use a smaller model"
                )
        else:
            wanted = max_batch_size * loaded.max_model_len * shape.bytes_per_token
            budget = min(_CPU_CACHE_BYTES, wanted)
        return PagedKVCache.num_blocks_for(budget, shape, block_size) + 1  # +1: the scratch block

    # ---- the engine interface -------------------------------------------------------------------
    def prefix_cache_stats(self) -> tuple[int, int] | None:
        """(queried, hit) prompt tokens since start, counted at each admission as vLLM does; None when off."""
        blocks = getattr(self, "block_manager", None)
        if not self.prefix_caching or blocks is None:
            return None
        return blocks.queries, blocks.hits

    @property
    def num_running(self) -> int:
        return self._core.num_running if self._core is not None else 0

    @property
    def num_waiting(self) -> int:
        return self._core.num_waiting if self._core is not None else 0

    @property
    def device(self) -> torch.device:
        """Where the model runs (the first parameter's device under a device_map)."""
        return self._loaded.device

    def encode(self, request: InferRequest) -> list[int]:
        return encode_prompt(self.tokenizer, request, self.generation.system)

    async def infer_async(
        self,
        request: InferRequest,
        request_config: RequestConfig | None = None,
        *,
        adapter_request: AdapterRequest | None = None,
    ):
        prepared = await self.prepare(request, request_config or RequestConfig(), adapter_request)
        config, params = prepared.config, prepared.params
        if prepared.beams is not None:  # transformers' generate, beside the continuously batched sequences
            from swiftops.engines.pt.beam_search import beam_search_response, check_beam_request

            check_beam_request(config, prepared.adapter, prepared.mm_inputs is not None)
            return await beam_search_response(
                self.model,
                self.tokenizer,
                prepared.prompt_ids,
                prepared.beams,
                self._eos,
                params.stop,
                self._loaded.device,
                prepared.name,
            )
        outputs = self._outputs(prepared)
        tools = bool(request.tools) and request.tool_choice != "none"
        if config.stream:
            return stream_response(outputs, config.n, prepared.name, tools, params.logprobs)
        response = await collect_response(outputs, config.n, prepared.name, tools, params.logprobs)
        if prepared.images_size and prepared.mm_inputs is not None:
            response.images_size = prepared.mm_inputs.image_sizes(self._loaded.processor)
        return response

    async def generate(
        self, request: InferRequest, config: RequestConfig, *, adapter_request: AdapterRequest | None = None
    ) -> AsyncIterator[SequenceOutput]:
        check_streamable(config)
        return self._outputs(await self.prepare(request, config, adapter_request))

    def _outputs(self, prepared: PreparedRequest) -> AsyncIterator[SequenceOutput]:
        loop = asyncio.get_running_loop()
        queue = OutputChannel(loop)
        seqs = self.launch(prepared, [AsyncSink(loop, queue)] * prepared.n)
        return self._drain(queue, seqs)

    async def prepare(
        self,
        request: InferRequest,
        config: RequestConfig,
        adapter_request: AdapterRequest | None = None,
        prompt_ids: list[int] | None = None,
    ) -> PreparedRequest:
        """Every check of a request, its prompt's token ids (encoded off the event loop unless given) and its
        resolved sampling settings. The engine process (swiftops.engines.process) calls this with the ids the
        API server already tokenized."""
        if self._core is None:
            raise EngineError("this engine was closed; build a new one")
        config = effective_config(config, self.generation, self._model_defaults)
        check_logit_token_ids(config, self._vocab_size)
        constraint = output_constraint(config, request)
        compiled = await self._compile_constraint(constraint, config.num_beams)  # a bad schema is a 400 before queueing
        adapter = self._adapter_for(adapter_request)
        name = adapter_request.name if adapter_request is not None else self.model_name
        mm_inputs = media = None
        if prompt_ids is not None:
            pass
        elif self.encoder is not None and request.prompt is None:
            # Off the loop; media in a pool of its own, so slow media never delays a text-only chat.
            pool = media_pool() if MultimodalEncoder.has_media(request) else text_pool()
            encoded = await pool.run(self.encoder.encode, request)
            prompt_ids = encoded.input_ids
            if MultimodalEncoder.has_media(request):
                mm_inputs = encoded
                if self.prefix_caching:  # hashing the pixels takes milliseconds: off the loop, like the encoding
                    media = await pool.run(media_key, encoded.tensors)
        else:
            check_text_only(request)
            # Off the event loop: the chat template and tokenizer take seconds on a megabyte prompt (the fast
            # tokenizer releases the GIL), and the server's other clients must not wait for that.
            prompt_ids = await tokenize_off_loop(request, self.encode, request)
        check_prompt_length(len(prompt_ids), self.max_model_len)
        salt = self.lora.digests.get(adapter, b"") if adapter is not None and self.lora is not None else b""
        hashes: list[bytes] = []
        if self.prefix_caching and config.num_beams <= 1:  # ~0.5 ms for 2,000 tokens: not on the engine thread
            block_size = self.block_manager.block_size
            if len(prompt_ids) <= _INLINE_HASH_TOKENS:  # cheaper than the hop to a worker thread and back
                hashes = prompt_block_hashes(prompt_ids, block_size, salt, media)
            else:
                hashes = await text_pool().run(prompt_block_hashes, prompt_ids, block_size, salt, media)
        plan = plan_request(config, self.max_model_len - len(prompt_ids), constraint)
        return PreparedRequest(
            list(prompt_ids),
            config,
            plan.params,
            adapter,
            name,
            mm_inputs,
            plan.n,
            compiled,
            media,
            salt,
            hashes,
            plan.beams,
            plan.images_size,
        )

    def launch(self, prepared: PreparedRequest, sinks: list[Any]) -> list[Sequence]:
        """Submit a prepared request's `n` sequences (seed + i for choice i); choice i's outputs go to `sinks[i]`."""
        params = prepared.params
        seqs = []
        for i in range(prepared.n):
            p = params
            if params.seed is not None and i:
                p = dataclasses.replace(params, seed=params.seed + i)
            seqs.append(
                Sequence(
                    prompt_ids=list(prepared.prompt_ids),
                    params=p,
                    sink=sinks[i],
                    index=i,
                    adapter=prepared.adapter,
                    mm_inputs=prepared.mm_inputs,
                    cache_salt=prepared.salt,
                    media_key=prepared.media,
                    block_hashes=list(prepared.hashes),
                    grammar=self._grammars.matcher(*prepared.compiled) if prepared.compiled is not None else None,
                )
            )
        assert self._core is not None  # narrows for mypy: prepare() refused a closed engine
        self._core.submit(seqs)
        return seqs

    def abort(self, seqs: list[Sequence]) -> None:
        """Stop generating these sequences (their consumer is gone); they produce nothing more. After close() there
        is nothing to stop: a stream read to its end or dropped after the engine closed lands here."""
        core = self._core
        for seq in seqs:
            seq.aborted = True
            if core is not None:
                core.abort(seq.seq_id)

    async def _compile_constraint(self, constraint: OutputConstraint | None, num_beams: int) -> Any:
        """(xgrammar's compiled grammar, the constraint) for the request's output constraint (None: free text),
        compiled off the engine loop and cached per constraint."""
        if constraint is None:
            return None
        if num_beams > 1:
            raise BadRequestError(
                "structured outputs (response_format, guided_*, a forced tool_choice) sample one "
                "token at a time; use num_beams 1 with them",
                param="num_beams",
            )
        return await self._grammars.compile(constraint), constraint

    def _adapter_for(self, adapter_request: AdapterRequest | None) -> str | None:
        if adapter_request is None or adapter_request.name == self.model_name:
            return self.default_adapter  # ms-swift applies an unnamed adapter to every request
        if (self.lora is None or not self.lora.modules) and adapter_request.path and self._can_add_lora():
            # ms-swift's PtEngine(model) takes AdapterRequest(name, path) with no adapters at start (demo_lora.py):
            # the LoRA layers are put in now, while no sequence runs through the model.
            self.lora = LoraManager(
                self.model, {adapter_request.name: adapter_request.path}, *self._lora_limits, self._model_source
            )
            assert self._core is not None  # narrows for mypy: prepare() refused a closed engine
            self._core.runner.lora = self.lora
            logger.info("LoRA support added for adapter %s", adapter_request.name)
        if self.lora is None:
            if adapter_request.path:
                raise BadRequestError(
                    "this engine was started without LoRA support; pass adapters=... "
                    "(or --adapters) or enable_lora=True to load adapters by path"
                )
            raise ModelNotFoundError(
                f"model {adapter_request.name!r} is not served here; available: {self.models}",
                param="model",
                code="model_not_found",
            )
        self.lora.register(adapter_request.name, adapter_request.path)
        return adapter_request.name

    def _can_add_lora(self) -> bool:
        """LoRA layers can go in later only on an idle engine without CUDA graphs (captured graphs would skip
        them); otherwise the engine must start with adapters=... or enable_lora=True."""
        assert self._core is not None  # narrows for mypy: called from prepare(), which refused a closed engine
        runner = self._core.runner
        return getattr(runner, "graphs", None) is None and not self.num_running and not self.num_waiting

    async def _drain(self, queue: OutputChannel, seqs: list[Sequence]) -> AsyncIterator[SequenceOutput]:
        """Outputs of a request's sequences until all finish; leaving early (cancel, close) aborts them."""
        remaining = len(seqs)
        held: deque[SequenceOutput] = deque()  # taken from the queue but belonging to another choice
        try:
            while remaining:
                out = held.popleft() if held else await queue.get()
                # A reader that fell behind takes what piled up as one output: fewer, larger chunks
                # instead of a backlog that grows with every step.
                while out.finish_reason is None and not held and not queue.empty():
                    later = queue.get_nowait()
                    if later.index != out.index:
                        held.append(later)
                        break
                    out = merge_outputs(out, later)
                if out.finish_reason is not None:
                    remaining -= 1
                yield out
        finally:
            if remaining:
                self.abort(seqs)

    def close(self) -> None:
        """Stop the engine thread and give its memory back (weights, KV cache, graphs), so that another engine can
        start in the same process."""
        core = getattr(self, "_core", None)
        if core is None:
            return
        core.stop()
        self._core = None
        self._grammars.close()
        for name in ("kv_cache", "block_manager", "model", "_loaded", "lora"):
            self.__dict__.pop(name, None)
        release_heap()  # the engine's objects, frozen at start-up and referencing each other, are freed now
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
