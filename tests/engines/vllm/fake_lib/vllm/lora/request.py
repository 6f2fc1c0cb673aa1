"""Fake vllm.lora.request.LoRARequest."""
from dataclasses import dataclass
from typing import Optional


@dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str = ""
    base_model_name: Optional[str] = None
