"""Incremental detokenization with stop strings that are never returned, not even in part while streaming."""

from __future__ import annotations

from typing import Any

# Prompt tokens decoded with the output, so tokenizers that drop a leading space in isolation
# (sentencepiece) decode the first output token as they would in context.
_CONTEXT_TOKENS = 5


def _decode_stream(tokenizer: Any, context: list[int]) -> Any | None:
    """A Rust-side incremental decoder (one step per token) for fast tokenizers, or None."""
    backend = getattr(tokenizer, "_tokenizer", None)
    try:
        from tokenizers import Tokenizer
        from tokenizers.decoders import DecodeStream

        if not isinstance(backend, Tokenizer):
            return None
        return DecodeStream(ids=context, skip_special_tokens=True)
    except (ImportError, TypeError):  # tokenizers before 0.22 take no context ids
        return None


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_ids: list[int], stop: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = list(prompt_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        # Decoded output not handed out yet (stop strings cut off). Handed-out text is dropped: a stop string can
        # never begin in it, since `take` holds back any end of the text that could begin one. So appending
        # stays cheap in long answers.
        self.text = ""
        self.stop = stop
        self._longest_stop = max((len(s) for s in stop), default=0)
        self.stopped = False
        self._stream = _decode_stream(tokenizer, self.ids)
        self._backend = getattr(tokenizer, "_tokenizer", None)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> None:
        """Append a token; sets `stopped` when a stop string appears (the text is cut before it)."""
        self.ids.append(token_id)
        if self._stream is not None:  # one decode step per token, UTF-8 pieces held back inside the stream
            piece = self._stream.step(self._backend, token_id)
            if piece:
                self._append(piece)
                self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self._append(full[len(prefix) :])
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)

    def add_all(self, token_ids: list[int]) -> None:
        """Decode many tokens at once (the non-streaming path): same text as adding them one by one."""
        self.ids.extend(token_ids)
        self.flush()

    def flush(self) -> None:
        """At the end, decode whatever is still held back (an incomplete UTF-8 sequence)."""
        if self.stopped:
            return
        if self.read_offset == len(self.ids):  # every token's text is out already: nothing held back to decode
            return
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix):
            self._append(full[len(prefix) :])
        self.prefix_offset = self.read_offset = len(self.ids)

    def _append(self, delta: str) -> None:
        if self.stopped:
            return
        if not self.stop:
            self.text += delta
            return
        start = max(0, len(self.text) - self._longest_stop)
        self.text += delta
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def _held_back(self) -> int:
        """Characters at the end of the text that could be the start of a stop string."""
        longest = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:k]):
                    longest = k
                    break
        return longest

    def take(self, final: bool) -> str:
        """Text not handed out yet; while not final, a possible stop-string prefix stays held back."""
        if final or self.stopped or not self.stop:
            out, self.text = self.text, ""
            return out
        end = len(self.text) - self._held_back()
        out, self.text = self.text[:end], self.text[end:]
        return out

    def token_text(self, token_id: int) -> str:
        return self._decode([token_id])


def token_bytes(text: str) -> list[int] | None:
    return list(text.encode("utf-8"))
