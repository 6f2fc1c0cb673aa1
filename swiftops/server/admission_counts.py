"""The counts admission control decides on: sequences running and sequences waiting.

`LocalCounts` for one API-server process. `SharedCounts` for several in front of one engine
(`--api_server_count`): two int64 counters in a small file that every API-server process maps, each change
made under an exclusive `flock` of that file, so that `--max_concurrency` and `--max_queue` bound the whole
deployment, not each process (vLLM's API servers share their engine's limits the same way, through it).
A change takes a few microseconds and happens twice per request, never per token.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from typing import Protocol

_PAIR = struct.Struct("=qq")  # running, waiting


class AdmissionCounts(Protocol):
    @property
    def running(self) -> int: ...

    @property
    def waiting(self) -> int: ...

    @property
    def shared(self) -> bool: ...

    def try_run(self, weight: int, limit: int) -> bool:
        """Count `weight` more sequences running if they fit under `limit` (or nothing runs: a request heavier
        than the whole capacity runs alone rather than never)."""
        ...

    def try_queue(self, weight: int, limit: int) -> bool:
        """Count `weight` more sequences waiting if they fit under `limit`."""
        ...

    def try_promote(self, weight: int, limit: int) -> bool:
        """Move `weight` waiting sequences to running if they fit (as try_run), in one step."""
        ...

    def add(self, running: int, waiting: int) -> None: ...


class LocalCounts:
    """The counts of one API-server process (used from its event loop only)."""

    shared = False

    def __init__(self) -> None:
        self.running = 0
        self.waiting = 0

    def try_run(self, weight: int, limit: int) -> bool:
        if self.running + weight <= limit or self.running == 0:
            self.running += weight
            return True
        return False

    def try_queue(self, weight: int, limit: int) -> bool:
        if self.waiting + weight <= limit:
            self.waiting += weight
            return True
        return False

    def try_promote(self, weight: int, limit: int) -> bool:
        if self.try_run(weight, limit):
            self.waiting -= weight
            return True
        return False

    def add(self, running: int, waiting: int) -> None:
        self.running += running
        self.waiting += waiting


class SharedCounts:
    """The counts of every API-server process of one deployment, in the file at `path` (created zeroed by the
    first process with `create=True`; the others open it)."""

    shared = True

    def __init__(self, path: str, create: bool = False) -> None:
        flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0)
        self._fd = os.open(path, flags, 0o600)
        if create:
            os.ftruncate(self._fd, _PAIR.size)
        self._map = mmap.mmap(self._fd, _PAIR.size)

    @property
    def running(self) -> int:
        return _PAIR.unpack_from(self._map)[0]

    @property
    def waiting(self) -> int:
        return _PAIR.unpack_from(self._map)[1]

    def _change(self, weight: int, limit: int, which: str) -> bool:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            running, waiting = _PAIR.unpack_from(self._map)
            if which == "queue":
                if waiting + weight > limit:
                    return False
                waiting += weight
            else:
                if running + weight > limit and running != 0:
                    return False
                running += weight
                if which == "promote":
                    waiting -= weight
            _PAIR.pack_into(self._map, 0, running, waiting)
            return True
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def try_run(self, weight: int, limit: int) -> bool:
        return self._change(weight, limit, "run")

    def try_queue(self, weight: int, limit: int) -> bool:
        return self._change(weight, limit, "queue")

    def try_promote(self, weight: int, limit: int) -> bool:
        return self._change(weight, limit, "promote")

    def add(self, running: int, waiting: int) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            now_running, now_waiting = _PAIR.unpack_from(self._map)
            _PAIR.pack_into(self._map, 0, now_running + running, now_waiting + waiting)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
