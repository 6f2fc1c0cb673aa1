"""`swiftops tiny-model OUT_DIR`: write a tiny random chat model (for tests, demos and trying the CLI offline)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import click

if TYPE_CHECKING:
    from swiftops.models.tiny import Arch
    from swiftops.models.tiny_vlm import VlmArch


@click.command("tiny-model")
@click.argument("out_dir", type=click.Path(file_okay=False, writable=True))
@click.option(
    "--arch",
    type=click.Choice(["qwen2", "llama", "qwen2_vl", "qwen2_5_vl"]),
    default="qwen2",
    show_default=True,
    help="transformers architecture of the model (qwen2_vl / qwen2_5_vl: a tiny "
    "vision-language model with a real processor).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
def command(out_dir: str, arch: str, seed: int) -> None:
    """Write a tiny randomly initialised chat model to OUT_DIR (a few seconds on CPU, no network)."""
    if arch in ("qwen2_vl", "qwen2_5_vl"):
        from swiftops.models.tiny_vlm import build_tiny_vlm

        path = build_tiny_vlm(out_dir, arch=cast("VlmArch", arch), seed=seed)  # click.Choice checked it
    else:
        from swiftops.models.tiny import build_tiny_model

        path = build_tiny_model(out_dir, arch=cast("Arch", arch), seed=seed)  # click.Choice checked it
    click.echo(str(path))
    click.echo(
        "note: its output is gibberish by design; pass any hub id or local path as --model for real output.", err=True
    )
