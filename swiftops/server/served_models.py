"""GET /v1/models: which names a request's `model` may use: the served name (the base model) and each LoRA
adapter."""

from __future__ import annotations

from fastapi import APIRouter, Request

from swiftops.engines.base import InferEngine
from swiftops.protocol import AdapterRequest, ModelCard, ModelList, ModelNotFoundError


class ModelRegistry:
    def __init__(self, engine: InferEngine, served_model_name: str | None) -> None:
        self.served_name = served_model_name or engine.model_name
        # The checkpoint's own name also selects the base model (clients written before a rename).
        self.base_aliases = {self.served_name, engine.model_name}
        self.adapters = list(engine.adapter_names)

    @property
    def names(self) -> list[str]:
        return [self.served_name, *self.adapters]

    def resolve(self, requested: str | None) -> tuple[str, AdapterRequest | None]:
        """(the name to echo in the response, the adapter to run or None for the base model)."""
        if requested is None or requested in self.base_aliases:
            return requested or self.served_name, None
        if requested in self.adapters:
            return requested, AdapterRequest(name=requested)
        raise ModelNotFoundError(
            f"the model {requested!r} does not exist; this server serves "
            f"{', '.join(repr(n) for n in self.names)} (see GET /v1/models)",
            param="model",
            code="model_not_found",
        )

    def card(self, name: str) -> ModelCard:
        self.resolve(name)  # 404 for unknown names
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
    return request.app.state.ctx.models.card(model)
