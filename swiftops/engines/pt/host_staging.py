"""A step's small host-device copies that never wait for the GPU: pinned buffers reused in turn.

Pipelined steps (swiftops.engines.pt.core) launch step N+1 while the GPU still runs step N, so any call on the
way that waits for the stream turns the pipeline back into a serial loop. Three ordinary torch idioms do:
`torch.tensor(list, device="cuda")` is a blocking copy (torch synchronizes the stream after it, so the host waits
for every step queued before it); `tensor.pin_memory()` and `torch.empty(..., pin_memory=True)` may call
`cudaHostAlloc`, which takes a driver-wide lock and stalls the host for milliseconds (vLLM removed its per-step
`pin_memory()` for the same sporadic stalls, vllm-project/vllm#37006). Measured on an H100 serving 128 streams of a
0.5B model (benchmarks/RESULTS.md, thirteenth session): a third of the engine thread's time was in the block
table's `pin_memory()` copy, and the steps that prefilled beside decoding rows took 2.8x a decode step.

Here each engine thread copies through a ring of pinned buffers allocated once (grown when a copy needs more): a
host-to-device copy writes a buffer and queues its copy; a buffer is written again only after the copy last queued
from it is done (an event), which is long past by the time the ring comes round. Device-to-host copies (sampled
tokens) land in a second ring whose buffers are handed out again only once the host has read the copy before, or
dropped it (a later copy into the buffer is queued behind the earlier one on the same stream).

On CPU nothing is staged: the data becomes a tensor where it is.
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import Any

import numpy as np
import torch

_UPLOAD_SLOTS = 32  # a step makes a handful of uploads: a buffer comes round several steps after its last copy
_DOWNLOAD_SLOTS = 8  # a pipelined engine has at most two or three samples on their way to the host
_SLOT_BYTES = 64 << 10  # a 1,024-token mixed step's inputs (~42 KB) fit; larger ones grow the buffer they get

_NUMPY_DTYPES = {
    torch.int64: np.int64,
    torch.int32: np.int32,
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.bool: np.bool_,
}


def _pinned(nbytes: int) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)


def _view(buffer: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    nbytes = math.prod(shape) * dtype.itemsize  # no tensor allocated for the size: this runs several times a step
    return buffer[:nbytes].view(dtype).view(shape)


class HostStaging:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pinned = device.type == "cuda"
        self._uploads: list[torch.Tensor] = []
        self._upload_done: list[Any] = []
        self._next_upload = 0
        self._downloads: list[torch.Tensor] = []
        self._download_owner: list[weakref.ref[Download] | None] = []
        self._next_download = 0
        self.grown = 0  # buffers replaced by larger ones (a copy past _SLOT_BYTES)

    def _fit(self, buffers: list[torch.Tensor], i: int, nbytes: int) -> torch.Tensor:
        """Buffer `i`, replaced by one at least twice its size when `nbytes` do not fit (its last copy is done)."""
        if nbytes > buffers[i].numel():
            buffers[i] = _pinned(max(nbytes, 2 * buffers[i].numel()))
            self.grown += 1
        return buffers[i]

    # ---- host -> device -------------------------------------------------------------------------
    def _upload_buffer(self, nbytes: int) -> tuple[int, torch.Tensor]:
        if not self._uploads:
            self._uploads = [_pinned(_SLOT_BYTES) for _ in range(_UPLOAD_SLOTS)]
            self._upload_done = [None] * _UPLOAD_SLOTS
        i = self._next_upload
        self._next_upload = (i + 1) % _UPLOAD_SLOTS
        done = self._upload_done[i]
        if done is not None:
            done.synchronize()  # the copy last queued from this buffer has been made (normally long ago)
        return i, self._fit(self._uploads, i, nbytes)

    def _host(self, data: Any, dtype: torch.dtype) -> np.ndarray:
        return np.asarray(data, dtype=_NUMPY_DTYPES[dtype])

    def to_device(self, data: Any, dtype: torch.dtype = torch.int64) -> torch.Tensor:
        """`data` (a list, nested lists of one length, or a numpy array) as a new tensor on the device."""
        if not self.pinned:
            return torch.as_tensor(data, dtype=dtype, device=self.device)
        array = self._host(data, dtype)
        out = torch.empty(array.shape, dtype=dtype, device=self.device)
        self._upload(out, array)
        return out

    def copy_into(self, target: torch.Tensor, data: Any) -> None:
        """Queue `target.copy_(data)`: `target` a device tensor of `data`'s size (an input buffer of a graph)."""
        array = self._host(data, target.dtype)
        if not self.pinned:
            target.copy_(torch.from_numpy(array).view(target.shape))
            return
        self._upload(target, array)

    def _upload(self, target: torch.Tensor, array: np.ndarray) -> None:
        i, buffer = self._upload_buffer(array.nbytes)
        host = _view(buffer, target.dtype, array.shape)
        host.numpy()[...] = array
        target.copy_(host.view(target.shape), non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self._upload_done[i] = done

    # ---- device -> host -------------------------------------------------------------------------
    def to_host(self, *values: torch.Tensor) -> Download:
        """Queue the copy of device tensors to the host; `Download.result()` waits for it alone."""
        return Download(self, values)

    def _download_buffer(self, owner: Download, nbytes: int) -> torch.Tensor:
        if not self._downloads:
            self._downloads = [_pinned(_SLOT_BYTES) for _ in range(_DOWNLOAD_SLOTS)]
            self._download_owner = [None] * _DOWNLOAD_SLOTS
        for _ in range(_DOWNLOAD_SLOTS):
            i = self._next_download
            self._next_download = (i + 1) % _DOWNLOAD_SLOTS
            ref = self._download_owner[i]
            held = ref() if ref is not None else None
            if held is None or held.read:  # read, or dropped unread (a pipeline cut short): free
                self._download_owner[i] = weakref.ref(owner)
                return self._fit(self._downloads, i, nbytes)
        return _pinned(nbytes)  # every buffer holds a copy not read yet (never seen): one of its own


class Download:
    """Device tensors on their way to the host: the copies are queued now, behind the work that produces them, and
    `result()` waits for them alone (not for later work queued behind), without holding the GIL.

    A plain `.tolist()` of a CUDA tensor blocks inside the copy with the GIL held, so while the step runs on the
    GPU no other Python thread (the server's event loop streaming tokens) can run; waiting on an event releases it.
    """

    def __init__(self, staging: HostStaging, values: tuple[torch.Tensor, ...]) -> None:
        self.read = False
        self._done = None
        self._values = values
        if staging.pinned and values:
            hosts = []
            for value in values:
                nbytes = value.numel() * value.element_size()
                host = _view(staging._download_buffer(self, nbytes), value.dtype, tuple(value.shape))
                hosts.append(host.copy_(value, non_blocking=True))
            self._values = tuple(hosts)
            self._done = torch.cuda.Event()
            self._done.record()

    def result(self) -> list[Any]:
        if self._done is not None:
            self._done.synchronize()
        values = [v.tolist() for v in self._values]
        self.read = True  # its buffers may take the next copies
        return values


_local = threading.local()


def staging_for(device: torch.device) -> HostStaging:
    """This thread's staging for `device` (an engine's steps all run on its one engine thread)."""
    rings = getattr(_local, "rings", None)
    if rings is None:
        rings = _local.rings = {}
    ring = rings.get(device)
    if ring is None:
        ring = rings[device] = HostStaging(device)
    return ring
