"""`load_dataset`, as ms-swift's demos call it: dataset names in, rows ready for `InferRequest(**row)` out.

    train, val = load_dataset(['data.jsonl#1000'], seed=42)
    requests = [InferRequest(**row) for row in train]

A row's final assistant turn (its label) is left out: the requests ask the model for it.
"""

from __future__ import annotations

from typing import Any

from swiftops.dataset.sources import DatasetRow, load_datasets, sample_rows


def _request_fields(row: DatasetRow) -> dict[str, Any]:
    fields: dict[str, Any] = {"messages": row.messages}
    for key in ("images", "videos", "audios"):
        if getattr(row, key):
            fields[key] = getattr(row, key)
    if row.tools:
        fields["tools"] = row.tools
    return fields


def load_dataset(
    datasets: str | list[str], *, seed: int = 42, split_dataset_ratio: float = 0.0, use_hf: bool | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(train rows, held-out rows or None) of `NAME_OR_PATH[:subset][#N]` datasets; `split_dataset_ratio` holds
    that share out (seeded by `seed`), as ms-swift's `load_dataset` does."""
    from swiftops.engines.model_source import wants_hugging_face

    rows = load_datasets(
        [datasets] if isinstance(datasets, str) else list(datasets), seed=seed, use_hf=wants_hugging_face(use_hf)
    )
    if not split_dataset_ratio:
        return [_request_fields(r) for r in rows], None
    held_out = sample_rows(rows, max(1, round(len(rows) * split_dataset_ratio)), seed)
    held_keys = {r.key for r in held_out}
    return ([_request_fields(r) for r in rows if r.key not in held_keys], [_request_fields(r) for r in held_out])
