"""`swiftops infer`: chat on the terminal, or run `--val_dataset` files into a resumable JSONL result file.

Flags are ms-swift's and come from the settings models (swiftops/protocol/settings.py).
Everything a user can get wrong (model path, dataset rows, flag values) is checked before weights load.
"""
from __future__ import annotations

import json
import sys
from typing import Optional

import click

from swiftops.cli.options import SettingsCommand, build_settings, settings_options
from swiftops.dataset.loader import DatasetRow, load_datasets
from swiftops.dataset.results import ResultWriter, default_result_path
from swiftops.engines.factory import build_engine, check_model_location
from swiftops.metrics.stats import InferStats
from swiftops.protocol.request import RequestConfig
from swiftops.protocol.settings import EngineSettings, GenerationSettings, InferSettings, ModelSettings

SETTINGS = (ModelSettings, EngineSettings, GenerationSettings, InferSettings)


def request_config(generation: GenerationSettings, *, stream: bool) -> RequestConfig:
    """The per-request sampling settings that the generation flags ask for."""
    return RequestConfig(
        max_tokens=generation.max_new_tokens, temperature=generation.temperature, top_k=generation.top_k,
        top_p=generation.top_p, repetition_penalty=generation.repetition_penalty, seed=generation.seed,
        stop=generation.stop_words or None, stream=stream,
        logprobs=generation.logprobs or generation.top_logprobs is not None,  # top_logprobs implies logprobs
        top_logprobs=generation.top_logprobs)


@click.command(cls=SettingsCommand, name="infer")
@settings_options(*SETTINGS)
def command(**values: object) -> None:
    """Chat with a model (interactive), or answer --val_dataset files and append the results as JSONL.

    Every flag also takes its dash spelling (--max-new-tokens) and a SWIFTOPS_<FLAG> environment variable.
    """
    model, engine_settings, generation, infer = build_settings(values, *SETTINGS)
    check_model_location(model)
    result_path = infer.result_path or default_result_path(model.model or "model")
    if infer.val_dataset:
        rows = load_datasets(infer.val_dataset)  # a bad row fails here, before weights load
        failed = run_dataset_mode(rows, model, engine_settings, generation, infer.stream, result_path)
        if failed:
            click.echo(f"error: {failed} of {len(rows)} rows failed (see the warnings above); re-run the same "
                       f"command to retry only them", err=True)
            sys.exit(1)  # ctx.exit would be swallowed: main() runs click with standalone_mode=False
    else:
        run_interactive_mode(model, engine_settings, generation, infer.stream, result_path)


def run_dataset_mode(rows: list[DatasetRow], model: ModelSettings, engine_settings: EngineSettings,
                     generation: GenerationSettings, stream: Optional[bool], result_path: str) -> int:
    """Answer the rows not yet in the result file; returns how many failed."""
    from tqdm import tqdm

    from swiftops.dataset.runner import DatasetRun

    if stream:
        click.echo("note: --stream is ignored with --val_dataset (rows are batched and written as they finish)",
                   err=True)
    with ResultWriter(result_path) as writer:
        pending = [row for row in rows if row.key not in writer.done_ids]
        click.echo(f"result_path: {result_path}")
        click.echo(f"{len(rows)} rows: {len(rows) - len(pending)} already in the result file, {len(pending)} to run")
        if not pending:
            return 0
        stats = InferStats()
        engine = build_engine(model, engine_settings, generation)
        try:
            with tqdm(total=len(rows), initial=len(rows) - len(pending), desc="infer", file=sys.stderr,
                      dynamic_ncols=True) as bar:
                failures = DatasetRun(engine, request_config(generation, stream=False), writer,
                                      system=generation.system, max_in_flight=2 * engine_settings.max_batch_size,
                                      stats=stats, progress=bar).run(pending)
        finally:
            engine.close()
    click.echo(json.dumps(stats.compute(), indent=2))
    click.echo(f"result_path: {result_path}")
    return len(failures)


def run_interactive_mode(model: ModelSettings, engine_settings: EngineSettings, generation: GenerationSettings,
                         stream: Optional[bool], result_path: str) -> None:
    from swiftops.cli.interactive import ChatSession

    if sys.stdin.isatty():
        import readline  # noqa: F401  (line editing and history for input())
    engine = build_engine(model, engine_settings, generation)
    try:
        config = request_config(generation, stream=True if stream is None else stream)
        ChatSession(engine, config, result_path=result_path, system=generation.system).run()
    finally:
        engine.close()
