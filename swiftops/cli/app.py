"""`swiftops app`: the chat web page, ms-swift's `swift app` without gradio.

    swiftops app --model Qwen/Qwen2.5-0.5B-Instruct --port 8000     # a server with the page at /
    swiftops app --base_url http://gpu-box:8000 --port 7860         # the page alone, for a running server

With a model it is `swiftops deploy --ui` (same flags, same server). With --base_url it serves only the
page, which then calls the API at that URL straight from the browser (the server allows any origin).
"""

from __future__ import annotations

import logging

import click

from swiftops.cli import deploy
from swiftops.cli.options import SettingsCommand, SettingsOption, build_settings, settings_options
from swiftops.protocol.errors import ConfigError
from swiftops.protocol.settings import ServerSettings


def _browsable(host: str) -> str:
    """An address a browser on this machine can open for a listening host."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def serve_page(base_url: str, server: ServerSettings) -> None:
    import uvicorn

    from swiftops.server.ui import create_ui_app, normalize_base_url

    api_base_url = normalize_base_url(base_url)
    deploy._configure_logging(server.verbose)
    (sock,) = deploy._bind(server)
    try:
        logging.getLogger("swiftops.server").info(
            "chat page: http://%s:%d/ (for the API at %s)", _browsable(server.host), server.port, api_base_url
        )
        config = uvicorn.Config(
            create_ui_app(api_base_url, title=server.studio_title, lang=server.lang),
            log_level="warning",
            lifespan="off",
        )
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


@click.command(cls=SettingsCommand, name="app")
@click.option(
    "--base_url",
    "--base-url",
    "base_url",
    cls=SettingsOption,
    default=None,
    metavar="URL",
    help="Serve only the page, for the server already running at URL (e.g. http://127.0.0.1:8000); "
    "the model flags are then not used.",
)
@click.option(
    "--stream",
    "stream",
    cls=SettingsOption,
    type=click.BOOL,
    is_flag=False,
    flag_value="true",
    default=None,
    metavar="[true|false]",
    help="`swift app`'s flag: the page always streams answers; false is refused.",
)
@click.option(
    "--is_multimodal",
    "--is-multimodal",
    "is_multimodal",
    cls=SettingsOption,
    type=click.BOOL,
    is_flag=False,
    flag_value="true",
    default=None,
    metavar="[true|false]",
    help="`swift app`'s flag: the page always offers image, video and audio attachments (a text-only "
    "model refuses them with a clear message), so this changes nothing.",
)
@settings_options(*deploy.SETTINGS)
def command(base_url: str | None, stream: bool | None, is_multimodal: bool | None, **values) -> None:
    """Chat in the browser: serve a model with a web page at / (or only the page, with --base_url).

    `swift app`'s --server_name and --server_port are --host and --port's other names."""
    if stream is False:
        raise ConfigError(
            "--stream false: the page always streams answers (the API still answers whole "
            "responses to clients that ask for them); drop the flag"
        )
    if base_url is None:
        (server,) = build_settings(values, ServerSettings)
        click.echo(f"chat page: http://{_browsable(server.host)}:{server.port}/ (once the model has loaded)", err=True)
        assert deploy.command.callback is not None  # narrows for mypy: a @click.command function is its callback
        deploy.command.callback(**{**values, "ui": True})
        return
    if values.get("model") or values.get("adapters"):
        raise ConfigError(
            "--base_url points the page at a running server, which already has its model; "
            "drop --model/--adapters, or drop --base_url to serve the model here"
        )
    (server,) = build_settings(values, ServerSettings)
    serve_page(base_url, server)
