"""`swiftops merge-results`: join the part files of a sharded `swiftops infer` run (Indexed Job pods) in input order.

Fails (exit 2, nothing written) when a part is missing or incomplete, naming the shards to re-run.
"""

from __future__ import annotations

import click

from swiftops.dataset.merge import merge_parts


@click.command(name="merge-results")
@click.option(
    "--result_path",
    "--result-path",
    "result_path",
    required=True,
    help="The --result_path the shards were given; parts are <result_path>.part-<k>-of-<n>.",
)
@click.option(
    "--num_shards",
    "--num-shards",
    "num_shards",
    type=click.IntRange(min=1),
    envvar="SWIFTOPS_NUM_SHARDS",
    required=True,
    help="Number of shards the run was split into (the Job's completions); SWIFTOPS_NUM_SHARDS also works.",
)
def command(result_path: str, num_shards: int) -> None:
    """Merge <result_path>.part-* of all NUM_SHARDS shards into RESULT_PATH, in input order."""
    merged = merge_parts(result_path, num_shards)
    click.echo(f"merged {merged} rows from {num_shards} shards in input order")
    click.echo(f"result_path: {result_path}")
