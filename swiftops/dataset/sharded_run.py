"""A `--val_dataset` run split over job shards (one per Kubernetes pod) and torchrun ranks: which rows, how many
processes, each process's share answered into its part of the result file, and rank 0's merge.

`swiftops infer` calls `run_dataset_shards`; each process then runs `run_dataset_mode` on its rows."""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import TYPE_CHECKING

import click

from swiftops.dataset.merge import merge_parts
from swiftops.dataset.results import ResultWriter
from swiftops.dataset.sharding import job_shard, write_shard_file
from swiftops.dataset.sources import DatasetRow, held_out_rows, load_datasets, sample_rows
from swiftops.dataset.torchrun import TorchrunRank, relaunch_under_torchrun
from swiftops.engines.factory import build_engine
from swiftops.engines.model_source import wants_hugging_face
from swiftops.metrics.stats import InferStats
from swiftops.protocol.errors import ConfigError
from swiftops.protocol.request import RequestConfig
from swiftops.protocol.settings import EngineSettings, GenerationSettings, InferSettings, MediaSettings, ModelSettings

if TYPE_CHECKING:
    from swiftops.dataset.runner import BoxDrawer


def dataset_rows(infer: InferSettings, model: ModelSettings) -> list[DatasetRow]:
    """--val_dataset's rows, else --dataset's held-out share (--split_dataset_ratio); --val_dataset_sample last."""
    use_hf = wants_hugging_face(model.use_hf)
    if infer.val_dataset:
        return load_datasets(infer.val_dataset, seed=infer.data_seed, sample=infer.val_dataset_sample, use_hf=use_hf)
    rows = held_out_rows(infer.dataset, infer.split_dataset_ratio, seed=infer.data_seed, use_hf=use_hf)
    return sample_rows(rows, infer.val_dataset_sample, infer.data_seed) if infer.val_dataset_sample else rows


def box_drawer(directory: str | None, media: MediaSettings) -> BoxDrawer | None:
    """--draw_boxes DIR, with the pixel limits the processor resizes images by (Qwen2.5-VL's boxes use them)."""
    if not directory:
        return None
    from swiftops.dataset.runner import BoxDrawer
    from swiftops.media.limits import MediaLimits

    limits = MediaLimits.resolve(media)
    return BoxDrawer(directory, min_pixels=limits.min_pixels, max_pixels=limits.max_pixels)


def nproc_per_node(infer: InferSettings) -> int:
    """--nproc_per_node, else ms-swift's NPROC_PER_NODE variable, else 1."""
    if infer.nproc_per_node is not None:
        return infer.nproc_per_node
    value = os.environ.get("NPROC_PER_NODE", "")
    if value and (not value.isdigit() or int(value) < 1):
        raise ConfigError(f"NPROC_PER_NODE={value!r} must be a whole number >= 1")
    return int(value) if value else 1


def run_dataset_shards(
    rows: list[DatasetRow],
    model: ModelSettings,
    engine_settings: EngineSettings,
    generation: GenerationSettings,
    media: MediaSettings,
    infer: InferSettings,
    result_path: str,
    config: RequestConfig,
) -> int:
    """Answer this process's share of `rows` with `config`; returns how many rows failed (over all ranks on rank 0).

    Job shard (--shard_index/--num_shards, one per Kubernetes pod) first: it writes its part of
    --result_path. Then torchrun ranks split the job shard again; rank 0 merges their parts into it.
    """
    launch = TorchrunRank.from_environment()
    job = job_shard(infer.shard_index, infer.num_shards)  # checked before torchrun starts N copies
    nproc = nproc_per_node(infer)
    if nproc > 1 and launch is None:
        if infer.result_path is None:  # the default name has a timestamp: settle it once for all ranks
            os.environ["SWIFTOPS_RESULT_PATH"] = result_path
        relaunch_under_torchrun(nproc, sys.argv[1:])
    if infer.result_path is None and (job.count > 1 or (launch is not None and launch.world_size > 1)):
        raise ConfigError(
            "a sharded run needs --result_path: every shard writes its part next to that file "
            "(the default name has a timestamp, which differs between processes)"
        )
    if launch is not None and infer.nproc_per_node not in (None, launch.world_size):
        click.echo(
            f"note: --nproc_per_node {infer.nproc_per_node} is ignored: torchrun started {launch.world_size} processes",
            err=True,
        )
    target = result_path
    if job.count > 1:
        target = job.part_path(result_path)
        job_rows = job.select(rows)
        if launch is None or launch.rank == 0:
            write_shard_file(target, job, [row.key for row in job_rows], len(rows))
        rows = job_rows
    # One process runs the rows itself; under torchrun each rank runs its share and rank 0 joins them.
    run = run_dataset_mode if launch is None or launch.world_size == 1 else functools.partial(run_dataset_ranks, launch)
    failed = run(
        rows,
        model,
        engine_settings,
        generation,
        media,
        infer.stream,
        target,
        config=config,
        draw_boxes=infer.draw_boxes,
    )
    if job.count > 1 and not failed and (launch is None or launch.rank == 0):
        click.echo(
            f"shard {job.index} of {job.count} done; once every shard is done, join them with: "
            f"swiftops merge-results --result_path {result_path} --num_shards {job.count}"
        )
    return failed


def run_dataset_ranks(
    launch: TorchrunRank,
    rows: list[DatasetRow],
    model: ModelSettings,
    engine_settings: EngineSettings,
    generation: GenerationSettings,
    media: MediaSettings,
    stream: bool | None,
    target: str,
    *,
    config: RequestConfig,
    draw_boxes: str | None = None,
) -> int:
    """One torchrun rank: answer rows i % world_size == rank into its part, then rank 0 merges all parts."""
    shard = launch.shard
    part = shard.part_path(target)
    mine = shard.select(rows)
    write_shard_file(part, shard, [row.key for row in mine], len(rows))
    device = launch.pick_device()
    if device.startswith("cuda") and model.device_map:
        click.echo(
            f"warning: rank {launch.rank}: --device_map {model.device_map} overrides {device}; "
            f"each rank may then load onto the same GPUs",
            err=True,
        )
    elif device.startswith("cuda"):
        model = model.model_copy(update={"device_map": device})  # weights load straight onto this rank's GPU
    launch.start()
    try:
        failed = run_dataset_mode(
            mine,
            model,
            engine_settings,
            generation,
            media,
            stream,
            part,
            config=config,
            draw_boxes=draw_boxes,
            label=f"rank {launch.rank}/{launch.world_size} ({device})",
            show_progress=launch.rank == 0,
        )
        mine_failed = failed
        failed = launch.total_over_ranks(failed)  # every rank is done past this line
        if launch.rank != 0:
            return mine_failed  # rank 0 reports the total and merges
        if failed:
            click.echo(
                f"not merging: {failed} rows failed over {launch.world_size} ranks; the parts "
                f"{target}.part-* are kept for the re-run",
                err=True,
            )
            return failed
        merged = merge_parts(target, launch.world_size)
        click.echo(f"merged {merged} rows from {launch.world_size} ranks in input order")
        click.echo(f"result_path: {target}")
        return 0
    finally:
        launch.stop()


def run_dataset_mode(
    rows: list[DatasetRow],
    model: ModelSettings,
    engine_settings: EngineSettings,
    generation: GenerationSettings,
    media: MediaSettings,
    stream: bool | None,
    result_path: str,
    *,
    config: RequestConfig,
    label: str = "",
    show_progress: bool = True,
    draw_boxes: str | None = None,
) -> int:
    """Answer the rows not yet in the result file; returns how many failed.

    `label` prefixes this process's lines (a torchrun rank); `show_progress` False hides its bar."""
    from tqdm import tqdm

    from swiftops.dataset.runner import DatasetRun

    prefix = f"{label}: " if label else ""
    with ResultWriter(result_path) as writer:
        pending = [row for row in rows if row.key not in writer.done_ids]
        click.echo(f"{prefix}result_path: {result_path}")
        click.echo(
            f"{prefix}{len(rows)} rows: {len(rows) - len(pending)} already in the result file, {len(pending)} to run"
        )
        if not pending:
            return 0
        stats = InferStats()
        engine = build_engine(model, engine_settings, generation, media)
        try:
            with tqdm(
                total=len(rows),
                initial=len(rows) - len(pending),
                desc="infer",
                file=sys.stderr,
                dynamic_ncols=True,
                disable=not show_progress,
            ) as bar:
                failures = DatasetRun(
                    engine,
                    config,
                    writer,
                    boxes=box_drawer(draw_boxes, media),
                    system=generation.system,
                    max_in_flight=2 * (engine.max_batch_size or 32),
                    stats=stats,
                    progress=bar,
                    echo=bool(stream) and show_progress,
                ).run(pending)
        finally:
            engine.close()
    click.echo(f"{prefix}{json.dumps(stats.compute(), indent=None if label else 2)}")  # a rank's: one line
    click.echo(f"{prefix}result_path: {result_path}")
    return len(failures)
