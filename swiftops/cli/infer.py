"""`swiftops infer`: chat on the terminal, or run `--val_dataset` files into a resumable JSONL result file.

Flags are ms-swift's and come from the settings models (swiftops/protocol/settings.py).
Everything a user can get wrong (model path, dataset rows, flag values) is checked before weights load.
"""

from __future__ import annotations

import sys

import click

from swiftops.cli.options import SettingsCommand, build_settings, settings_options
from swiftops.dataset.results import default_result_path, refuse_input_as_result
from swiftops.dataset.sharded_run import box_drawer, dataset_rows, run_dataset_shards
from swiftops.engines.factory import build_engine, check_model_location
from swiftops.engines.model_source import apply_adapter_args
from swiftops.protocol.errors import ConfigError
from swiftops.protocol.request import RequestConfig
from swiftops.protocol.sampling import wants_logprobs
from swiftops.protocol.settings import EngineSettings, GenerationSettings, InferSettings, MediaSettings, ModelSettings

SETTINGS = (ModelSettings, EngineSettings, GenerationSettings, MediaSettings, InferSettings)


def request_config(generation: GenerationSettings, *, stream: bool) -> RequestConfig:
    """This run's own choices: streaming (not with beams, which answer whole) and beam search. The sampling
    defaults in `generation` (--temperature, --max_new_tokens ...) are the engine's, applied by it to every
    request (swiftops.protocol.sampling); `logprobs` is set here too because the result writer records them."""
    config = RequestConfig(stream=stream and generation.num_beams == 1, num_beams=generation.num_beams)
    config.logprobs = wants_logprobs(config, generation)
    return config


@click.command(cls=SettingsCommand, name="infer")
@settings_options(*SETTINGS)
def command(**values: object) -> None:
    """Chat with a model (interactive), or answer --val_dataset files and append the results as JSONL.

    Every flag also takes its dash spelling (--max-new-tokens) and a SWIFTOPS_<FLAG> environment variable.
    """
    model, engine_settings, generation, media, infer = build_settings(values, *SETTINGS)
    model, generation = apply_adapter_args(model, generation)  # `--adapters DIR` alone, as swift infer takes it
    check_model_location(model)
    result_path = infer.result_path or default_result_path(model.model or "model")
    if infer.val_dataset or infer.dataset:
        refuse_input_as_result(result_path, [*(infer.val_dataset or []), *(infer.dataset or [])])
        rows = dataset_rows(infer, model)  # a bad row fails here, before weights load (or a relaunch)
        config = request_config(generation, stream=False)
        failed = run_dataset_shards(rows, model, engine_settings, generation, media, infer, result_path, config)
        if failed:
            click.echo(
                f"error: {failed} of {len(rows)} rows failed (see the warnings above); re-run the same "
                f"command to retry only them",
                err=True,
            )
            sys.exit(1)  # ctx.exit would be swallowed: main() runs click with standalone_mode=False
    else:
        if (infer.nproc_per_node or 1) > 1 or (infer.num_shards or 1) > 1 or infer.shard_index is not None:
            raise ConfigError(
                "--nproc_per_node, --num_shards and --shard_index split the rows of --val_dataset; "
                "pass --val_dataset (the interactive chat runs in one process)"
            )
        run_interactive_mode(model, engine_settings, generation, media, infer.stream, result_path, infer.draw_boxes)


def run_interactive_mode(
    model: ModelSettings,
    engine_settings: EngineSettings,
    generation: GenerationSettings,
    media: MediaSettings,
    stream: bool | None,
    result_path: str,
    draw_boxes: str | None = None,
) -> None:
    from swiftops.cli.interactive import ChatSession

    if sys.stdin.isatty():
        import readline  # noqa: F401  (line editing and history for input())
    engine = build_engine(model, engine_settings, generation, media)
    try:
        config = request_config(generation, stream=True if stream is None else stream)
        ChatSession(
            engine, config, result_path=result_path, system=generation.system, boxes=box_drawer(draw_boxes, media)
        ).run()
    finally:
        engine.close()
