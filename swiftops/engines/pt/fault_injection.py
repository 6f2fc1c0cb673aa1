"""Test-only fault injection for the pt engine loop: proves that one failing request fails alone.

Inactive (and free) unless the environment variable SWIFTOPS_FAULT_INJECT is set when the engine starts.
Nothing else reads that variable; production deployments never set it. Its value is comma-separated
rules `KIND:MARKER`: an engine step that holds a sequence whose prompt contains MARKER raises

- `error:MARKER`  a RuntimeError (a bug or a bad kernel for that one input),
- `oom:MARKER`    torch.OutOfMemoryError (the batch did not fit in memory with that input in it),

or, for `delay:MARKER`, sleeps 50 ms (a slow step: it makes "the client left mid-prefill" observable on a tiny
model whose steps take a millisecond).

    SWIFTOPS_FAULT_INJECT="error:@@boom@@,oom:@@oom@@" swiftops deploy --model ...

The reliability suite (tests/reliability/test_engine_faults.py) uses it; see docs/reliability.md.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Iterable
from typing import Any

import torch

ENV_VAR = "SWIFTOPS_FAULT_INJECT"
DELAY_S = 0.05
_KINDS = {
    "error": lambda marker: RuntimeError(f"injected fault for a prompt containing {marker!r}"),
    "oom": lambda marker: torch.OutOfMemoryError(f"injected out-of-memory for a prompt containing {marker!r}"),
}


class FaultInjector:
    def __init__(self, rules: list[tuple[str, str]], tokenizer: Any) -> None:
        self.rules = rules
        self.tokenizer = tokenizer
        self._prompts: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    @classmethod
    def from_env(cls, tokenizer: Any) -> FaultInjector | None:
        spec = os.environ.get(ENV_VAR, "").strip()
        if not spec:
            return None
        rules = []
        for rule in spec.split(","):
            kind, _, marker = rule.partition(":")
            if (kind not in _KINDS and kind != "delay") or not marker:
                raise ValueError(f"{ENV_VAR}: bad rule {rule!r}; use error:MARKER, oom:MARKER or delay:MARKER")
            rules.append((kind, marker))
        return cls(rules, tokenizer)

    def check(self, seqs: Iterable[Any]) -> None:
        """Raise the rule's exception (or sleep) if any of `seqs` (engine Sequences) has a marked prompt."""
        delay = False
        for seq in seqs:
            prompt = self._prompts.get(seq)
            if prompt is None:
                prompt = self._prompts[seq] = self.tokenizer.decode(seq.prompt_ids)
            for kind, marker in self.rules:
                if marker in prompt:
                    if kind == "delay":
                        delay = True
                    else:
                        raise _KINDS[kind](marker)
        if delay:
            time.sleep(DELAY_S)
