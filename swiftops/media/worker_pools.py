"""Thread pools of their own for media (fetch + decode) and for prompt tokenization.

Both used to run on the event loop's default executor (`asyncio.to_thread`): eight requests whose media
took 20 s each held every thread of it, and a plain chat waited 17 s for its tokenizer. Now media waits
only behind media, text only behind text, and a full media queue is a 429 instead of ever more waiting.

The request's context variables (its media budget, the special-token policy) travel into the worker.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from swiftops.protocol.errors import OverloadedError

T = TypeVar("T")


class BoundedPool:
    """`await pool.run(fn, *args)`: `fn` on one of `workers` threads; more than `max_queue` waiting is a 429."""

    def __init__(self, name: str, workers: int, max_queue: int | None) -> None:
        self.name = name
        self.workers = workers
        self.max_queue = max_queue
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"swiftops-{name}")
        self._pending = 0  # submitted and not finished (running + waiting)
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        return max(0, self._pending - self.workers)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            if self.max_queue is not None and self._pending - self.workers >= self.max_queue:
                raise OverloadedError(
                    f"the server's {self.name} queue is full ({self.max_queue} waiting for "
                    f"{self.workers} workers); retry after the time in the Retry-After header",
                    code="server_overloaded",
                )
            self._pending += 1
        context = contextvars.copy_context()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, context.run, fn, *args)
        finally:
            with self._lock:
                self._pending -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


_DEFAULT_TEXT_WORKERS = max(2, min(8, os.cpu_count() or 2))
_pools: dict[str, BoundedPool] = {}


def configure(media_workers: int, media_queue: int) -> None:
    """The server's sizes (--media_workers, --media_queue); before the first request."""
    old = _pools.pop("media", None)
    if old is not None:
        old.shutdown()
    _pools["media"] = BoundedPool("media", media_workers, media_queue)


def media_pool() -> BoundedPool:
    """Fetching and decoding images, videos and audio (the CLI and Python API: 4 workers, no queue limit)."""
    if "media" not in _pools:
        _pools["media"] = BoundedPool("media", 4, None)
    return _pools["media"]


def text_pool() -> BoundedPool:
    """Chat templates and tokenizers (the fast tokenizer releases the GIL: a megabyte prompt takes seconds)."""
    if "text" not in _pools:
        _pools["text"] = BoundedPool("tokenizer", _DEFAULT_TEXT_WORKERS, None)
    return _pools["text"]


_INLINE_IDS = 65_536  # token ids copied on the event loop up to this many (a few ms at most; JSON parsing took longer)


async def tokenize_off_loop(request: Any, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)`, the tokenization of `request`'s prompt, on the text pool; a prompt given as token ids has nothing
    to tokenize and runs inline (up to _INLINE_IDS ids), saving each such request a hop to a worker thread and back."""
    prompt = getattr(request, "prompt", None)
    if isinstance(prompt, list) and len(prompt) <= _INLINE_IDS:
        return fn(*args)
    return await text_pool().run(fn, *args)
