"""The interactive chat of `swiftops infer` (no --val_dataset), with ms-swift's special commands.

`<<< ` reads a question; `multi-line` switches to input ending with a line that ends in `#`,
`single-line` back; `reset-system` makes the next input the system prompt and clears history;
`clear` clears history; `quit`/`exit` or EOF (Ctrl-D) ends the session. A query with `<image>`,
`<video>` or `<audio>` tags asks for one path or URL per tag, as ms-swift does. Every answered turn is
appended to the result file in the same row format as dataset mode.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO, cast

from swiftops.dataset.results import ResultWriter
from swiftops.dataset.runner import describe_failure, result_row
from swiftops.engines.base import InferEngine
from swiftops.protocol.errors import PromptTooLongError, SwiftopsError
from swiftops.protocol.request import InferRequest, RequestConfig
from swiftops.protocol.response import (
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatMessage,
    ChoiceLogprobs,
    UsageInfo,
)

PROMPT = "<<< "
MULTI_LINE_PROMPT = "<<<[M] "
SYSTEM_PROMPT = "System <<< "
SEPARATOR = "-" * 50
BANNER = (
    "Input `exit` or `quit` to exit the conversation.\n"
    "Input `multi-line` to switch to multi-line input mode (end the input with a line ending in `#`).\n"
    "Input `reset-system` to set a new system prompt and clear the history.\n"
    "Input `clear` to clear the history."
)
MEDIA_TAG = re.compile(r"<(image|video|audio)>")
COMMANDS = {"multi-line", "single-line", "reset-system", "clear", "quit", "exit"}


class ChatSession:
    """One conversation with an engine on the terminal; `run()` returns when the user quits."""

    def __init__(
        self,
        engine: InferEngine,
        config: RequestConfig,
        *,
        result_path: str,
        system: str | None = None,
        out: TextIO | None = None,
        read_line: Callable[[str], str] = input,
        boxes: Any = None,
    ) -> None:
        self.boxes = boxes  # a swiftops.dataset.runner.BoxDrawer with --draw_boxes
        self.engine = engine
        self.config = config
        self.result_path = result_path
        self.default_system = system
        self.system = system
        self.out = out or sys.stdout  # looked up per session, not at import: the process may swap sys.stdout
        self.read_line = read_line
        self.multi_line = False
        self.history: list[dict[str, Any]] = []
        # media of the whole conversation, in tag order: every turn re-sends the history's tags
        self.media: dict[str, list[str]] = {"images": [], "videos": [], "audios": []}
        self.session_id = f"chat-{datetime.now():%Y%m%d-%H%M%S}"
        self.turns = 0
        self._writer: ResultWriter | None = None

    # ---- reading --------------------------------------------------------------------------------
    def read_query(self) -> str:
        """One input: a line, or in multi-line mode lines up to one ending in `#` (which is removed)."""
        if not self.multi_line:
            return self.read_line(PROMPT)
        lines: list[str] = []
        prompt = MULTI_LINE_PROMPT
        while True:
            line = self.read_line(prompt)
            prompt = ""
            if not lines and line.strip().lower() in COMMANDS:
                return line  # a special command typed on its own needs no `#`
            if line.rstrip().endswith("#"):
                lines.append(line.rstrip()[:-1])
                return "\n".join(lines)
            lines.append(line)

    # ---- the loop -------------------------------------------------------------------------------
    def run(self) -> None:
        print(BANNER, file=self.out, flush=True)
        try:
            while True:
                try:
                    query = self.read_query()
                except EOFError:  # Ctrl-D ends the session cleanly
                    print(file=self.out, flush=True)
                    return
                if not self.handle(query):
                    return
        finally:
            if self._writer is not None:
                self._writer.close()
                print(f"results: {self.result_path}", file=sys.stderr, flush=True)

    def handle(self, query: str) -> bool:
        """Carry out a special command or answer a query; False ends the session."""
        command = query.strip().lower()
        if command in ("quit", "exit"):
            return False
        if command == "multi-line":
            self.multi_line = True
            print("Switched to multi-line mode: end the input with a line ending in `#`.", file=self.out, flush=True)
        elif command == "single-line":
            self.multi_line = False
            print("Switched to single-line mode.", file=self.out, flush=True)
        elif command == "clear":
            self.clear_history()
            print("History cleared.", file=self.out, flush=True)
        elif command == "reset-system":
            self.system = self.read_line(SYSTEM_PROMPT).strip() or None
            self.clear_history()
            print("System prompt set; history cleared.", file=self.out, flush=True)
        elif command:
            self.answer(query.strip())
        return True

    def clear_history(self) -> None:
        self.history.clear()
        for items in self.media.values():
            items.clear()

    def read_media(self, query: str) -> dict[str, list[str]]:
        """One path or URL per media tag of the query, added after the conversation's earlier media."""
        media = {kind: list(items) for kind, items in self.media.items()}
        for kind in MEDIA_TAG.findall(query):
            article = "an" if kind in ("image", "audio") else "a"
            media[f"{kind}s"].append(self.read_line(f"Input {article} {kind} path or URL <<< ").strip())
        return media

    # ---- answering ------------------------------------------------------------------------------
    def messages_for(self, query: str) -> list[dict[str, Any]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, *self.history, {"role": "user", "content": query}]

    def answer(self, query: str) -> None:
        messages = self.messages_for(query)
        media = self.read_media(query)
        try:
            response = self._generate(InferRequest(messages=messages, **media))
        except KeyboardInterrupt:
            print("\n[interrupted]", file=self.out, flush=True)
            return
        except Exception as exc:  # e.g. the conversation outgrew the context: say so and go on
            if not isinstance(exc, SwiftopsError) and os.environ.get("SWIFTOPS_DEBUG") == "1":
                raise
            hint = " (`clear` starts a fresh conversation)" if isinstance(exc, PromptTooLongError) else ""
            print(f"\nerror: {describe_failure(exc)}{hint}", file=self.out, flush=True)
            return
        print(f"\n{SEPARATOR}", file=self.out, flush=True)
        text = response.choices[0].message.content or ""
        self.history += [{"role": "user", "content": query}, {"role": "assistant", "content": text}]
        self.media = media
        self.turns += 1
        self.writer().write(
            result_row(
                f"{self.session_id}-{self.turns}",
                messages,
                response,
                with_logprobs=self.config.logprobs,
                **cast(dict[str, Any], {kind: items for kind, items in media.items() if items}),  # media kinds: **extra
            )
        )
        if self.boxes is not None:
            saved = self.boxes.save(f"{self.session_id}-{self.turns}", media.get("images") or [], response)
            if saved:
                print(f"boxes drawn: {saved}", file=self.out, flush=True)

    def _generate(self, request: InferRequest) -> ChatCompletionResponse:
        if not self.config.stream:
            response = self.engine.infer([request], self.config, use_tqdm=False)[0]
            print(response.choices[0].message.content or "", end="", file=self.out, flush=True)
            return response
        return self._stream(request)

    def _stream(self, request: InferRequest) -> ChatCompletionResponse:
        """Print chunks as they arrive; gather them into one response for the result file."""
        stream = self.engine.infer([request], self.config, use_tqdm=False)[0]
        parts: list[str] = []
        logprobs: list[Any] = []
        finish_reason, usage = None, UsageInfo()
        try:
            for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices[:1]:
                    if choice.delta.content:
                        parts.append(choice.delta.content)
                        print(choice.delta.content, end="", file=self.out, flush=True)
                    if choice.logprobs is not None and choice.logprobs.content:
                        logprobs += choice.logprobs.content
                    finish_reason = choice.finish_reason or finish_reason
        finally:
            stream.close()  # aborts the generation if we stopped early (Ctrl-C)
        choice = ChatCompletionResponseChoice(
            index=0,
            message=ChatMessage(content="".join(parts)),
            finish_reason=finish_reason,
            logprobs=ChoiceLogprobs(content=logprobs) if self.config.logprobs else None,
        )
        return ChatCompletionResponse(model=self.engine.model_name, choices=[choice], usage=usage)

    def writer(self) -> ResultWriter:
        if self._writer is None:  # created on the first answer: quitting at once leaves no empty file
            self._writer = ResultWriter(self.result_path, fsync_every=1)
        return self._writer
