"""Fake lmdeploy.messages: the engine instance's output shapes (ResponseType, EngineOutput)."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Optional


class ResponseType(enum.Enum):
    SUCCESS = enum.auto()
    FINISH = enum.auto()
    ENGINE_STOP_ERROR = enum.auto()
    SESSION_REPEAT = enum.auto()
    SESSION_NOT_EXIST = enum.auto()
    HANDLER_NOT_EXIST = enum.auto()
    INPUT_LENGTH_ERROR = enum.auto()
    INTERNAL_ENGINE_ERROR = enum.auto()
    CANCEL = enum.auto()


@dataclass
class EngineOutput:
    status: ResponseType
    token_ids: list[int]
    logprobs: Optional[list[dict[int, float]]] = None
    logits: Any = None
