"""Running dataset rows through an engine: a bounded number in flight, each row written as it finishes."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

from swiftops.dataset.results import ResultWriter
from swiftops.dataset.sources import DatasetRow
from swiftops.engines.base import InferEngine
from swiftops.metrics.stats import InferStats
from swiftops.protocol.errors import SwiftopsError
from swiftops.protocol.request import RequestConfig
from swiftops.protocol.response import ChatCompletionResponse


def result_row(
    key: str,
    messages: list[dict[str, Any]],
    response: ChatCompletionResponse,
    *,
    labels: str | None = None,
    with_logprobs: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """One line of the result file (dataset and interactive mode write the same shape). `labels` is ms-swift's
    name for the reference answer (files written before this release call it `label`; they resume all the same:
    resuming goes by `id`)."""
    choice = response.choices[0]
    row: dict[str, Any] = {
        "id": key,
        **extra,
        "messages": messages,
        "response": choice.message.content,
        "labels": labels,
        "finish_reason": choice.finish_reason,
        "usage": response.usage.model_dump(),
    }
    if choice.message.tool_calls:
        row["tool_calls"] = [call.model_dump() for call in choice.message.tool_calls]
    if with_logprobs:
        row["logprobs"] = choice.logprobs.model_dump()["content"] if choice.logprobs else None
    return row


class BoxDrawer:
    """`--draw_boxes DIR`: each answer's grounding boxes drawn on its request's first image, saved as DIR/<id>.png."""

    def __init__(self, directory: str, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.min_pixels, self.max_pixels = min_pixels, max_pixels

    def save(self, key: str, images: list[Any], response: ChatCompletionResponse) -> str | None:
        from swiftops.template.grounding import save_drawn_boxes

        if not images:
            return None
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_") or "answer"
        return save_drawn_boxes(
            response.choices[0].message.content or "",
            images[0],
            os.path.join(self.directory, f"{name}.png"),
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
        )


def sample_report(messages: list[dict[str, Any]], labels: str | None, response: str | None) -> str:
    """What `--stream true` prints per dataset sample, as ms-swift does: the last query, the labels, the response."""
    query = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
    return f"[QUERY] {query}\n[LABELS] {labels}\n[RESPONSE] {response}\n{'-' * 50}"


def describe_failure(exc: BaseException) -> str:
    return exc.message if isinstance(exc, SwiftopsError) else f"{type(exc).__name__}: {exc}"


class DatasetRun:
    """Answers `rows` with `engine` and appends each finished one to `writer`; failed rows are reported, not written.

    At most `max_in_flight` requests are submitted at once (enough to keep the engine's batch full
    while bounding memory for large datasets).
    """

    def __init__(
        self,
        engine: InferEngine,
        config: RequestConfig,
        writer: ResultWriter,
        *,
        system: str | None = None,
        max_in_flight: int = 64,
        stats: InferStats | None = None,
        progress: Any = None,
        boxes: BoxDrawer | None = None,
        echo: bool = False,
    ) -> None:
        self.engine = engine
        self.config = config
        self.writer = writer
        self.system = system
        self.max_in_flight = max(1, max_in_flight)
        self.stats = stats or InferStats()
        self.stats.track_prefix_cache(engine.prefix_cache_stats)  # the summary's prefix-cache hit rate
        self.progress = progress  # a tqdm bar, or None
        self.failures: list[tuple[DatasetRow, BaseException]] = []
        self.boxes = boxes  # --draw_boxes
        self.echo = echo  # --stream true: print each sample's query, labels and response as it finishes
        # Reward, PRM and classifier models score the whole conversation, final answer included (as ms-swift
        # does); generating models answer the conversation without it (it is the row's label).
        from swiftops.engines.pt.task import SCORING_TASKS

        self.whole = engine.task_type in SCORING_TASKS

    def run(self, rows: list[DatasetRow]) -> list[tuple[DatasetRow, BaseException]]:
        asyncio.run(self.run_async(rows))
        return self.failures

    async def run_async(self, rows: list[DatasetRow]) -> None:
        pending = iter(rows)
        workers = [asyncio.create_task(self._worker(pending)) for _ in range(min(self.max_in_flight, len(rows)))]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()

    async def _worker(self, pending: Iterator[DatasetRow]) -> None:
        for row in pending:  # one shared iterator: each row goes to exactly one worker
            await self._answer(row)

    async def _answer(self, row: DatasetRow) -> None:
        request = row.to_request(self.system, whole=self.whole)
        messages = request.messages
        self.stats.start(row.key)
        try:
            response = await self.engine.infer_async(request, self.config)
            assert isinstance(response, ChatCompletionResponse)  # narrows for mypy: the dataset config has stream off
        except Exception as exc:  # one bad row must not lose the rest of the run
            self.failures.append((row, exc))
            self._note(
                f"warning: {row.source} line {row.line} failed and was skipped "
                f"(re-run the same command to retry it): {describe_failure(exc)}"
            )
            return
        self.stats.finish(
            row.key, response.usage.prompt_tokens, response.usage.completion_tokens, len(response.choices)
        )
        media = {
            kind: items
            for kind, items in (("images", row.images), ("videos", row.videos), ("audios", row.audios))
            if items
        }
        self.writer.write(
            result_row(
                row.key,
                messages,
                response,
                labels=row.label,
                with_logprobs=self.config.logprobs,
                source=row.source,
                index=row.index,
                **media,
            )
        )
        if self.echo:
            self._note(sample_report(messages, row.label, response.choices[0].message.content), err=False)
        if self.boxes is not None:
            self.boxes.save(row.key, request.images, response)
        if self.progress is not None:
            self.progress.update(1)

    def _note(self, text: str, err: bool = True) -> None:
        stream = sys.stderr if err else sys.stdout
        if self.progress is not None:
            self.progress.write(text, file=stream)  # above the bar, not through it
        else:
            print(text, file=stream, flush=True)
