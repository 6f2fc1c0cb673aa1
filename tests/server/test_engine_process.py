"""The shared server runs its engine in a child process (so the disconnect, metrics and adapter tests of this
suite all cross the process boundary), and a request naming a LoRA adapter runs it there."""
from __future__ import annotations

import re
from pathlib import Path

CHAT = "/v1/chat/completions"


def _children(pid: int) -> set[int]:
    kids: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        kids.update(int(k) for k in (task / "children").read_text().split())
    return kids


def test_the_engine_runs_in_a_child_process_of_the_server(server):
    found = re.search(r"engine process (\d+) ready", server.output())
    assert found, server.output()[-2000:]
    engine_pid = int(found.group(1))
    assert engine_pid != server.process.pid and engine_pid in _children(server.process.pid)
    assert "multiprocessing" in Path(f"/proc/{engine_pid}/cmdline").read_bytes().decode(errors="replace")


def test_adapters_are_chosen_by_name_across_the_boundary(http, adapter_names, served_name):
    def answer(model: str) -> str:
        body = {"model": model, "messages": [{"role": "user", "content": "write one line"}], "max_tokens": 10,
                "temperature": 0}
        response = http.post(CHAT, json=body)
        assert response.status_code == 200, response.text
        assert response.json()["model"] == model
        return response.json()["choices"][0]["message"]["content"]

    base = answer(served_name)
    by_adapter = {name: answer(name) for name in adapter_names}
    assert any(text != base for text in by_adapter.values())  # the adapters' weights were applied
    assert {name: answer(name) for name in adapter_names} == by_adapter  # the same adapter, the same answer
