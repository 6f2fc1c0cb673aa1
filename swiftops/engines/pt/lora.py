"""Many LoRA adapters over one base model, mixed in one batch.

Each targeted `nn.Linear` is wrapped by `LoraLinear`, which holds the A and B matrices of every resident
adapter stacked by slot (slot 0 is all zeros: the base model). The runner tells the manager which slot
each packed token uses; the wrapper adds `scale * B @ A @ x` per token, so a token's output depends only
on its own adapter, never on its batch neighbours. Adapters load on first use into free slots and the
least recently used idle one is unloaded when `max_loras` are resident.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from swiftops.engines.pt.prefix_hash import weights_digest
from swiftops.protocol import BadRequestError, ConfigError, ModelNotFoundError

logger = logging.getLogger(__name__)
_PREFIX = "base_model.model."


@dataclass
class LoraWeights:
    name: str
    path: str
    rank: int
    scale: float
    target_modules: list[str]
    base_model: str | None
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module name -> (A [r, in], B [out, r])
    digest: bytes = b""  # of the weights and scale: the adapter's identity in the prefix cache


def read_adapter(name: str, path: str, max_rank: int) -> LoraWeights:
    """Read a peft LoRA checkpoint directory (adapter_config.json + adapter_model.safetensors/.bin)."""
    config_path = os.path.join(path, "adapter_config.json")
    if not os.path.exists(config_path):
        raise ConfigError(f"adapter {name!r}: {path} has no adapter_config.json (expected a peft LoRA directory)")
    with open(config_path) as f:
        cfg = json.load(f)
    if cfg.get("peft_type", "LORA") != "LORA" or cfg.get("use_dora") or cfg.get("modules_to_save"):
        raise ConfigError(
            f"adapter {name!r}: only plain LoRA can be served unmerged (this one uses "
            f"{cfg.get('peft_type')}, DoRA or modules_to_save); pass it with --merge_lora true"
        )
    rank = int(cfg["r"])
    if rank > max_rank:
        raise ConfigError(f"adapter {name!r} has rank {rank} > --max_lora_rank {max_rank}; raise --max_lora_rank")
    alpha = float(cfg.get("lora_alpha", rank))
    scale = alpha / (rank**0.5) if cfg.get("use_rslora") else alpha / rank
    weights_file = os.path.join(path, "adapter_model.safetensors")
    if os.path.exists(weights_file):
        from safetensors.torch import load_file

        state = load_file(weights_file)
    else:
        state = torch.load(os.path.join(path, "adapter_model.bin"), map_location="cpu", weights_only=True)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in key:
                module = key.split(marker)[0]
                module = module[len(_PREFIX) :] if module.startswith(_PREFIX) else module
                pairs.setdefault(module, {})[part] = tensor
    if not pairs:
        raise ConfigError(f"adapter {name!r}: no LoRA weights found in {path}")
    tensors = {m: (p["lora_A"], p["lora_B"]) for m, p in pairs.items() if "lora_A" in p and "lora_B" in p}
    targets = cfg.get("target_modules") or []
    return LoraWeights(
        name,
        path,
        rank,
        scale,
        targets if isinstance(targets, list) else [targets],
        cfg.get("base_model_name_or_path"),
        tensors,
        weights_digest(tensors, scale),
    )


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, manager: LoraManager, slots: int, rank: int) -> None:
        super().__init__()
        self.base = base
        self.manager = manager
        weight = base.weight
        dtype = weight.dtype if weight.dtype.is_floating_point else torch.bfloat16
        # Quantized bases (bnb) keep packed weights; their logical shape is in_features/out_features.
        self.in_features, self.out_features = base.in_features, base.out_features
        self.lora_a = torch.zeros(slots, rank, self.in_features, dtype=dtype, device=weight.device)
        self.lora_b = torch.zeros(slots, self.out_features, rank, dtype=dtype, device=weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        slots = self.manager.token_slots
        if slots is None:
            return out
        flat = x.reshape(-1, x.shape[-1]).to(self.lora_a.dtype)  # [T, in]
        if self.manager.gather:  # one shape for every batch: CUDA-graph friendly
            a = self.lora_a[slots]  # [T, r, in]
            b = self.lora_b[slots]  # [T, out, r]
            delta = torch.bmm(b, torch.bmm(a, flat.unsqueeze(-1))).squeeze(-1)
        else:
            delta = torch.zeros(flat.shape[0], self.out_features, dtype=flat.dtype, device=flat.device)
            for slot in self.manager.active_slots:
                rows = (slots == slot).nonzero().squeeze(-1)
                delta.index_copy_(0, rows, (flat[rows] @ self.lora_a[slot].T) @ self.lora_b[slot].T)
        return out + delta.to(out.dtype).view(*out.shape[:-1], self.out_features)


class LoraManager:
    """Resident adapters by slot, LRU unloading, and the per-token slot map of the current step."""

    def __init__(
        self, model: nn.Module, adapters: dict[str, str], max_loras: int, max_rank: int, model_source: str
    ) -> None:
        self.model = model
        self.max_rank = max_rank
        self.paths = dict(adapters)
        self.model_source = model_source
        self.slots: OrderedDict[str, int] = OrderedDict()  # resident name -> slot, least recent first
        self.free_slots = list(range(max_loras, 0, -1))
        # The per-token slot map belongs to the thread running the step: beam search runs transformers' generate
        # on a worker thread beside the engine loop and must see the base model, not the loop's last batch.
        self._step = threading.local()
        self.gather = False
        self._pending = {name: read_adapter(name, path, max_rank) for name, path in adapters.items()}
        self.digests = {name: w.digest for name, w in self._pending.items()}  # name -> weights digest
        targets = {m for w in self._pending.values() for m in w.tensors}
        self.modules: dict[str, LoraLinear] = {}
        for name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                full = f"{name}.{child_name}" if name else child_name
                if full in targets and isinstance(child, nn.Linear):
                    wrapped = LoraLinear(child, self, max_loras + 1, max_rank)
                    setattr(module, child_name, wrapped)
                    self.modules[full] = wrapped
        for weights in self._pending.values():
            self._check(weights)

    @property
    def names(self) -> list[str]:
        return list(self.paths)

    def _check(self, w: LoraWeights) -> None:
        missing = [m for m in w.tensors if m not in self.modules]
        if missing:
            raise ConfigError(
                f"adapter {w.name!r} targets modules this model does not have or that no adapter given "
                f"at start-up targets: {missing[:3]}; is it for another base model ({w.base_model})?"
            )
        for module, (a, b) in w.tensors.items():
            lin = self.modules[module]
            if a.shape[1] != lin.in_features or b.shape[0] != lin.out_features:
                raise ConfigError(
                    f"adapter {w.name!r} does not fit this model: {module} is "
                    f"{lin.in_features}->{lin.out_features} but the adapter expects "
                    f"{a.shape[1]}->{b.shape[0]} (trained for {w.base_model or 'another model'}?)"
                )

    def register(self, name: str, path: str | None) -> None:
        """Make an adapter known (a request may name a new one with its path); loaded on first use."""
        if name in self.paths:
            return
        if not path:
            raise ModelNotFoundError(
                f"adapter {name!r} is not loaded; known adapters: {sorted(self.paths)}",
                param="model",
                code="model_not_found",
            )
        if not self.modules:
            raise BadRequestError("this engine was started without LoRA support; start it with --adapters")
        weights = read_adapter(name, path, self.max_rank)
        self._check(weights)
        self.paths[name] = path
        self._pending[name] = weights
        self.digests[name] = weights.digest

    def acquire(self, name: str, busy: set[str]) -> int | None:
        """The slot holding `name`, loading it (and unloading an idle one) if needed; None if all are busy."""
        if name in self.slots:
            self.slots.move_to_end(name)
            return self.slots[name]
        if not self.free_slots:
            idle = next((n for n in self.slots if n not in busy), None)
            if idle is None:
                return None
            self.free_slots.append(self.slots.pop(idle))
            logger.info("unloaded LoRA adapter %s", idle)
        weights = self._pending.get(name) or read_adapter(name, self.paths[name], self.max_rank)
        slot = self.free_slots.pop()
        for module, lin in self.modules.items():
            lin.lora_a[slot].zero_()
            lin.lora_b[slot].zero_()
            if module in weights.tensors:
                a, b = weights.tensors[module]
                lin.lora_a[slot, : weights.rank].copy_(a.to(lin.lora_a.dtype))
                lin.lora_b[slot, :, : weights.rank].copy_((b * weights.scale).to(lin.lora_b.dtype))
        self._pending.pop(name, None)
        self.slots[name] = slot
        logger.info("loaded LoRA adapter %s into slot %d", name, slot)
        return slot

    def set_step(self, token_slots: torch.Tensor | None, active: list[int]) -> None:
        self._step.token_slots = token_slots
        self._step.active_slots = active

    @property
    def token_slots(self) -> torch.Tensor | None:
        """This thread's step's adapter slot of each token (None: the base model)."""
        return getattr(self._step, "token_slots", None)

    @property
    def active_slots(self) -> list[int]:
        return getattr(self._step, "active_slots", [])


def merge_adapter(model: nn.Module, path: str) -> nn.Module:
    """Fold one adapter into the base weights (`--merge_lora true`) with peft."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, path).merge_and_unload()
    except (ValueError, RuntimeError, OSError) as exc:
        raise ConfigError(f"cannot merge adapter {path}: {exc}") from exc
