"""Typed request, response, settings and error models; imports pydantic only."""
from swiftops.protocol.errors import (AuthenticationError, BadRequestError, ConfigError, EngineError, ErrorResponse,
                                      ModelNotFoundError, NotReadyError, OverloadedError, PromptTooLongError,
                                      SwiftopsError, UnsupportedError)
from swiftops.protocol.request import AdapterRequest, InferRequest, RequestConfig
from swiftops.protocol.response import (ChatCompletionResponse, ChatCompletionResponseChoice,
                                        ChatCompletionResponseStreamChoice, ChatCompletionStreamResponse,
                                        ChatCompletionTokenLogprob, ChatMessage, ChoiceLogprobs, CompletionChoice,
                                        CompletionLogprobs, CompletionResponse, DeltaMessage, DeltaToolCall,
                                        EmbeddingData, EmbeddingResponse, FunctionCall, ModelCard, ModelList,
                                        ToolCall, TopLogprob, UsageInfo, new_id)

__all__ = [name for name in dir() if not name.startswith("_")]
