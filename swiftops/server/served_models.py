"""GET /v1/models: which names a request's `model` may use: the served name (the base model) and each LoRA
adapter."""

from __future__ import annotations

from fastapi import APIRouter, Request

from swiftops.engines.base import InferEngine
from swiftops.protocol import ModelCard, ModelList
from swiftops.server.validation import resolve_model


class ModelRegistry:
    """The names this server answers to; a request's name is resolved (or refused) by validation.resolve_model."""

    def __init__(self, engine: InferEngine, served_model_name: str | None) -> None:
        self.served_name = served_model_name or engine.model_name
        # The checkpoint's own name also selects the base model (clients written before a rename).
        self.base_aliases = {self.served_name, engine.model_name}
        self.adapters = list(engine.adapter_names)

    @property
    def names(self) -> list[str]:
        return [self.served_name, *self.adapters]

    def card(self, name: str) -> ModelCard:
        parent = self.served_name if name in self.adapters else None
        return ModelCard(id=name, parent=parent)

    def listing(self) -> ModelList:
        return ModelList(data=[self.card(name) for name in self.names])


router = APIRouter()


@router.get("/v1/models", response_model=ModelList, summary="The served model and its LoRA adapters")
async def list_models(request: Request) -> ModelList:
    return request.app.state.ctx.models.listing()


@router.get("/v1/models/{model}", response_model=ModelCard, summary="One model by name")
async def retrieve_model(model: str, request: Request) -> ModelCard:
    models = request.app.state.ctx.models
    resolve_model(models, model)  # 404 for unknown names
    return models.card(model)
