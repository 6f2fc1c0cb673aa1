"""One choice's token ids -> its text deltas, outside the engine loop: incremental detokenization with the pt
engine's own `IncrementalDetokenizer`, stop strings, and logprob entries.

Used where the tokens come from elsewhere: the API server reading the engine process's token ids, and the
LMDeploy relay. The text is what the in-process pt engine hands out for the same tokens: a token that ended
the sequence as EOS or a stop token id is not text; a stop string ends it, cut off and never streamed, not
even in part.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from swiftops.engines.outputs import SequenceOutput
from swiftops.engines.pt.detokenizer import IncrementalDetokenizer, token_bytes
from swiftops.protocol import ChatCompletionTokenLogprob, TopLogprob


class TokenDecoder:
    def __init__(
        self,
        tokenizer: Any,
        prompt_ids: Sequence[int],
        index: int,
        stop: tuple[str, ...] = (),
        want_logprobs: bool = False,
    ) -> None:
        self.detokenizer = IncrementalDetokenizer(tokenizer, list(prompt_ids), stop)
        self.index = index
        self.want_logprobs = want_logprobs
        self.completion_tokens = 0
        self.finished = False

    @property
    def stopped_by_string(self) -> bool:
        """A stop string ended the text: the engine may still be generating this sequence (abort it)."""
        return self.detokenizer.stopped

    def feed(
        self,
        token_ids: list[int],
        finish_reason: str | None,
        prompt_tokens: int,
        raw_logprobs: list[Any] | None = None,
        *,
        final_token_is_text: bool = False,
    ) -> SequenceOutput:
        """Tokens the engine produced for this choice since the last call; `finish_reason` set on the last call.

        `final_token_is_text`: the backend already decided the last token is text (LMDeploy keeps EOS out of
        its token ids); by default a sequence that finished with "stop" ended on an EOS or stop-id token."""
        detok = self.detokenizer
        if len(token_ids) == 1 and finish_reason is None and not self.want_logprobs:
            # A streamed token (the usual case, once per token of every stream): the loop below, unrolled.
            self.completion_tokens += 1
            detok.add(token_ids[0])
            stopped = detok.stopped
            if stopped:
                self.finished = True
            return SequenceOutput(
                self.index,
                detok.take(final=stopped),
                token_ids,
                [],
                "stop" if stopped else None,
                prompt_tokens,
                self.completion_tokens,
            )
        finish = finish_reason
        entries = []
        last = len(token_ids) - 1
        # A whole answer at once (a non-streamed request): one decode of every token instead of a decode step per
        # token, the same text (add_all); without stop strings nothing can end it early.
        whole = finish_reason is not None and not detok.stop and not self.want_logprobs
        if whole:
            ends_on_stop_token = bool(token_ids) and finish_reason == "stop" and not final_token_is_text
            self.completion_tokens += len(token_ids)
            detok.add_all(list(token_ids[:-1] if ends_on_stop_token else token_ids))
        for k, token in enumerate([] if whole else token_ids):
            self.completion_tokens += 1
            if self.want_logprobs and raw_logprobs is not None and k < len(raw_logprobs):
                entries.append(self._entry(token, raw_logprobs[k]))
            if k == last and finish_reason == "stop" and not final_token_is_text:
                break
            detok.add(token)
            if detok.stopped:
                finish = "stop"
                break
        if finish is not None:
            if not whole:  # add_all has decoded everything already
                detok.flush()
            self.finished = True
        return SequenceOutput(
            index=self.index,
            text=detok.take(final=finish is not None),
            token_ids=token_ids,
            logprobs=entries,
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=self.completion_tokens,
        )

    def _entry(self, token: int, raw: Any) -> ChatCompletionTokenLogprob:
        chosen, top = raw
        text = self.detokenizer.token_text(token)
        tops = []
        for tid, lp in top:
            t = self.detokenizer.token_text(int(tid))
            tops.append(TopLogprob(token=t, logprob=float(lp), bytes=token_bytes(t)))
        return ChatCompletionTokenLogprob(token=text, logprob=float(chosen), bytes=token_bytes(text), top_logprobs=tops)
