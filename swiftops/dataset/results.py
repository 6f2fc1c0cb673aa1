"""The result file: JSONL, appended one whole line per finished sample, so a killed run can resume.

Each row is one write() of the whole line to a file opened O_APPEND (fsynced every few rows), so a killed
process leaves at most one partial last line; opening the file again drops that line, and the
`id`s already in the file tell the next run which samples to skip.

The file is checked whole before anything is changed: a file that is not a result file (a text file, the
dataset itself given by mistake) is refused with the file untouched, never truncated first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from swiftops.protocol.errors import ConfigError


def default_result_path(model: str, directory: str = "results") -> str:
    """results/<model-name>-<YYYYmmdd-HHMMSS>.jsonl, as ms-swift names its result files."""
    name = Path(model.rstrip("/")).name or "model"
    return str(Path(directory) / f"{name}-{datetime.now():%Y%m%d-%H%M%S}.jsonl")


def refuse_input_as_result(result_path: str, inputs: Iterable[str]) -> None:
    """--result_path must not be one of the input files (the same path, or a link to the same file): results
    appended to the dataset would damage it."""
    target = Path(result_path)
    for source in inputs:
        same = Path(source).resolve() == target.resolve()
        if not same and target.exists() and Path(source).exists():
            same = os.path.samefile(source, target)
        if same:
            raise ConfigError(
                f"--result_path {result_path} is the input file {source}; results would be appended "
                f"into it; give another --result_path",
                param="result_path",
            )


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
        self._fd: int | None = None  # opened on the first row: a run that fails early leaves no empty file

    def _repair_and_index(self) -> None:
        """Check every complete line, then drop a partial last line left by a killed run; collect the ids."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        complete, tail = data, b""
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1  # 0 when the only line is partial
            complete, tail = data[:keep], data[keep:]
        for line_no, line in enumerate(complete.split(b"\n"), 1):
            if line.strip():
                self._index(self._parse(line, line_no))
        if tail:
            # Our rows are one write() of `{...}\n`: a killed run leaves the start of an object. Anything else
            # is not ours to cut (a text file's unterminated last line): refuse, the file untouched.
            if not tail.lstrip().startswith(b"{"):
                raise ConfigError(
                    f"result file {self.path}: its last line is not a result row (is it a result "
                    f"file?); the file was left unchanged: fix or remove it, or pass another "
                    f"--result_path"
                )
            with self.path.open("r+b") as f:
                f.truncate(len(complete))  # the unfinished row is run again

    def _parse(self, line: bytes, line_no: int) -> Any:
        try:
            return json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ConfigError(
                f"result file {self.path} line {line_no} is not JSON (is it a result file?); the file "
                f"was left unchanged: fix or remove it, or pass another --result_path"
            ) from None

    def _index(self, row: Any) -> None:
        if isinstance(row, dict) and row.get("id") is not None:
            self.done_ids.add(str(row["id"]))

    def write(self, row: dict[str, Any]) -> None:
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        view = memoryview(line)
        while view:  # one write() for the line; a partial write (disk full, signal) is finished, not interleaved
            view = view[os.write(self._fd, view) :]
        self._unsynced += 1
        if self._unsynced >= self.fsync_every:
            self.sync()
        if row.get("id") is not None:
            self.done_ids.add(str(row["id"]))

    def sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
        self._unsynced = 0

    def close(self) -> None:
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: BaseException | None) -> None:
        self.close()
