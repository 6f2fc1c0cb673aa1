"""What identifies a full KV-cache block for prefix caching: its tokens, chained with everything before them.

A block's keys and values depend on every token up to its end, and on whatever else changes the model's hidden
states: the LoRA adapter (identified by a digest of its weights and scale, not its name, so that two names for one
adapter share blocks and one name reused for other weights never does) and, for multimodal prompts, the media (a
digest of the processor's pixel tensors and grids). Block i's hash covers the previous block's hash and block i's
tokens, so one lookup per block finds the longest cached prefix. The adapter's digest goes into the first block, the
media's into the block holding the first media token: tokens before any image are shared with text-only prompts.

SHA-256 rather than Python's `hash`: a collision would hand one request another's cache, and requests come from
different users.
"""

from __future__ import annotations

import hashlib
from array import array
from typing import Any

import torch

from swiftops.engines.pt.sequence import Sequence


def prompt_block_hashes(
    prompt_ids: list[int], block_size: int, salt: bytes = b"", media: tuple[int, bytes] | None = None
) -> list[bytes]:
    """The chained hashes of a prompt's full blocks: computed where the request is prepared, off the engine loop."""
    return _chain(
        [],
        array("q", prompt_ids).tobytes(),
        len(prompt_ids) // block_size,
        8 * block_size,
        salt,
        media[0] // block_size if media is not None else -1,
        media[1] if media is not None else b"",
    )


def extend_block_hashes(seq: Sequence, num_blocks: int, block_size: int) -> list[bytes]:
    """`seq.block_hashes` grown to its first `num_blocks` full blocks (computed once per block, kept with it)."""
    hashes = seq.block_hashes
    if len(hashes) >= num_blocks:
        return hashes
    ids = seq.prompt_ids if num_blocks * block_size <= len(seq.prompt_ids) else seq.all_ids
    start = len(hashes) * block_size
    media = seq.media_key
    return _chain(
        hashes,
        array("q", ids[start : num_blocks * block_size]).tobytes(),
        num_blocks,
        8 * block_size,
        seq.cache_salt,
        media[0] // block_size if media is not None else -1,
        media[1] if media is not None else b"",
    )


def _chain(
    hashes: list[bytes],
    data: bytes,
    num_blocks: int,
    width: int,
    salt: bytes,
    media_block: int = -1,
    media_digest: bytes = b"",
) -> list[bytes]:
    """Append the hashes of blocks len(hashes)..num_blocks - 1 to `hashes`; `data` holds those blocks' tokens
    (int64, `width` bytes a block). The salt goes into block 0, the media digest into block `media_block`."""
    first = len(hashes)
    parent = hashes[-1] if hashes else b""
    sha256, append = hashlib.sha256, hashes.append
    for i in range(first, num_blocks):  # one call per block: this runs for every prompt token / block_size
        extra = (salt if i == 0 else b"") + (media_digest if i == media_block else b"")
        offset = (i - first) * width
        parent = sha256(parent + extra + data[offset : offset + width]).digest()
        append(parent)
    return hashes


def media_key(tensors: dict[str, Any]) -> tuple[int, bytes] | None:
    """(position of the first media token, digest of every media tensor) of a processor's output; None for text.

    `tensors` is `MultimodalInputs.tensors`: input_ids [1, S] and attention_mask besides the pixel values, grids,
    token types (mm_token_type_ids: 0 for text) and audio features."""
    h = hashlib.sha256()
    media = False
    for name in sorted(tensors):
        value = tensors[name]
        # input_ids are hashed as tokens, and token types follow from them (and vary with the text's length)
        if (
            name in ("input_ids", "attention_mask")
            or name.endswith("token_type_ids")
            or not isinstance(value, torch.Tensor)
        ):
            continue
        media = True
        h.update(name.encode())
        h.update(str(tuple(value.shape)).encode())
        h.update(_raw_bytes(value))
    if not media:
        return None
    types = tensors.get("mm_token_type_ids")
    first = 0  # without token types: the media may sit anywhere, so nothing is shared with other prompts
    if isinstance(types, torch.Tensor) and bool(types.any()):
        first = int(types.reshape(-1).nonzero()[0])
    return first, h.digest()


def weights_digest(tensors: dict[str, tuple[Any, Any]], scale: float) -> bytes:
    """Digest of a LoRA adapter's A and B matrices (by module name) and its scale."""
    h = hashlib.sha256(repr(float(scale)).encode())
    for module in sorted(tensors):
        h.update(module.encode())
        for t in tensors[module]:
            h.update(str(tuple(t.shape)).encode())
            h.update(_raw_bytes(t))
    return h.digest()


def _raw_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
