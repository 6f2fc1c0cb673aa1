"""The result file: JSONL, appended one whole line per finished sample, so a killed run can resume.

Each row is written with a single write() and flushed (and fsynced every few rows), so a killed
process leaves at most one partial last line; opening the file again drops that line, and the
`id`s already in the file tell the next run which samples to skip.
"""
from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, TextIO

from swiftops.protocol.errors import ConfigError


def default_result_path(model: str, directory: str = "results") -> str:
    """results/<model-name>-<YYYYmmdd-HHMMSS>.jsonl, as ms-swift names its result files."""
    name = Path(model.rstrip("/")).name or "model"
    return str(Path(directory) / f"{name}-{datetime.now():%Y%m%d-%H%M%S}.jsonl")


class ResultWriter:
    """Appends result rows to a JSONL file and knows which row ids it already holds."""

    def __init__(self, path: str, fsync_every: int = 16) -> None:
        self.path = Path(path)
        self.fsync_every = fsync_every
        self.done_ids: set[str] = set()
        self._unsynced = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the folder of --result_path {path}: {exc.strerror}") from None
        if self.path.is_dir():
            raise ConfigError(f"--result_path {path} is a directory; give a .jsonl file path")
        self._repair_and_index()
        self._file: Optional[TextIO] = None  # opened on the first row: a run that fails early leaves no empty file

    def _repair_and_index(self) -> None:
        """Drop a truncated last line left by a killed run, and collect the ids already written."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1  # 0 when the only line is partial
            with self.path.open("r+b") as f:
                f.truncate(keep)
            data = data[:keep]
        for line_no, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise ConfigError(f"result file {self.path} line {line_no} is not JSON; "
                                  f"fix or remove it, or pass another --result_path") from None
            if isinstance(row, dict) and row.get("id") is not None:
                self.done_ids.add(str(row["id"]))

    def write(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, ensure_ascii=False) + "\n"
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(line)
        self._file.flush()
        self._unsynced += 1
        if self._unsynced >= self.fsync_every:
            self.sync()
        if row.get("id") is not None:
            self.done_ids.add(str(row["id"]))

    def sync(self) -> None:
        if self._file is not None:
            os.fsync(self._file.fileno())
        self._unsynced = 0

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self.sync()
            self._file.close()

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc: Optional[BaseException]) -> None:
        self.close()
