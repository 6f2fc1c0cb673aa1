"""`swiftops` entry point: a click group whose commands live one per module in this package.

User errors (`SwiftopsError`, click usage errors) print one line and exit 2; `--debug` shows tracebacks.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import click

# command name -> module defining a click command called `command`; imported only when used,
# so `swiftops validate` never imports torch.
COMMANDS = {
    "tiny-model": "swiftops.cli.tiny_model",
    "infer": "swiftops.cli.infer",
    "deploy": "swiftops.cli.deploy",
    "app": "swiftops.cli.app",
    "validate": "swiftops.cli.manifest_commands",
    "render": "swiftops.cli.manifest_commands",
    "apply": "swiftops.cli.manifest_commands",
    "schema": "swiftops.cli.manifest_commands",
    "chart": "swiftops.cli.manifest_commands",
    "merge-results": "swiftops.cli.merge_results",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, module in COMMANDS.items() if importlib.util.find_spec(module) is not None]

    def get_command(self, ctx: click.Context, name: str):
        module_name = COMMANDS.get(name)
        if module_name is None or importlib.util.find_spec(module_name) is None:
            return None
        module = importlib.import_module(module_name)
        attr = "command" if hasattr(module, "command") else name.replace("-", "_") + "_command"
        return getattr(module, attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, envvar="SWIFTOPS_DEBUG", help="Show tracebacks of errors.")
@click.version_option(package_name="swiftops")
def cli(debug: bool) -> None:
    """swiftops: run and deploy LLMs and multimodal LLMs."""
    if debug:
        os.environ["SWIFTOPS_DEBUG"] = "1"


def main(argv: list[str] | None = None) -> None:
    from swiftops.protocol.errors import SwiftopsError

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("SWIFTOPS_DEBUG") == "1"
    try:
        cli.main(args=argv, prog_name="swiftops", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        if debug:
            raise
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(2)
    except SwiftopsError as exc:
        if debug:
            raise
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
