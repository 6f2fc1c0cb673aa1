"""`swiftops deploy`: serve a model over an OpenAI-compatible HTTP API.

    swiftops deploy --model Qwen/Qwen2.5-7B-Instruct --served_model_name qwen --api_key /run/secrets/key

The port is bound before the weights load: a taken port fails at once with exit status 2
(ms-swift silently moves to another port, which a load balancer never finds).
"""

from __future__ import annotations

import errno
import logging
import sys

import click

from swiftops.cli.options import SettingsCommand, build_settings, settings_options
from swiftops.protocol.errors import ConfigError
from swiftops.protocol.settings import EngineSettings, GenerationSettings, MediaSettings, ModelSettings, ServerSettings

SETTINGS = (ModelSettings, EngineSettings, GenerationSettings, MediaSettings, ServerSettings)


def _configure_logging(verbose: bool) -> None:
    from swiftops.server.lifecycle import configure_logging

    configure_logging(verbose)


def _bind(server: ServerSettings, count: int = 1):
    """The listening sockets, one per API-server process."""
    from swiftops.server.lifecycle import bind_sockets

    try:
        return bind_sockets(server.host, server.port, count)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {server.port} on {server.host} is already in use by another process; "
                f"stop it or choose another port with --port",
                param="port",
            ) from None
        raise ConfigError(
            f"cannot listen on {server.host}:{server.port}: {exc.strerror or exc}; check --host and --port",
            param="host",
        ) from None


@click.command(cls=SettingsCommand, name="deploy")
@settings_options(*SETTINGS)
def command(**values) -> None:
    """Serve a model over an OpenAI-compatible API (chat, completions, embeddings, models, metrics)."""
    model, engine_settings, generation, media, server = build_settings(values, *SETTINGS)
    from swiftops.server.auth import resolve_api_key

    resolve_api_key(server.api_key)  # a bad key file fails now, not after the weights load
    _configure_logging(server.verbose)
    count = _api_server_count(server, model, engine_settings)
    sockets = _bind(server, count)
    clean = True
    try:
        from swiftops.server.app import create_app
        from swiftops.server.lifecycle import serve

        engine = _start_engine(model, engine_settings, generation, media, count)
        try:
            if count == 1:
                lifecycle = serve(create_app(engine, server), server, sockets[0])
            else:
                from swiftops.server.api_servers import serve_several

                lifecycle, clean = serve_several(engine, server, sockets)
        finally:
            engine.close()
    finally:
        for sock in sockets:
            sock.close()
    if lifecycle.engine_failure:  # non-zero: Kubernetes restarts the pod
        logging.getLogger("swiftops.server").error("exiting with status 1: %s", lifecycle.engine_failure)
        sys.exit(1)
    if not clean:
        logging.getLogger("swiftops.server").error("exiting with status 1: an API-server process did not drain cleanly")
        sys.exit(1)


def _api_server_count(server: ServerSettings, model: ModelSettings, engine: EngineSettings) -> int:
    """--api_server_count, or its default; 1 where the engine does not run in a process of its own."""
    from swiftops.engines.process.client import runs_in_engine_process
    from swiftops.server.api_servers import default_api_server_count

    if not runs_in_engine_process(model, engine):
        if server.api_server_count and server.api_server_count > 1:
            logging.getLogger("swiftops.server").warning(
                "--api_server_count %d ignored: only the pt engine of a text model runs in its own process; "
                "this model is served from one process",
                server.api_server_count,
            )
        return 1
    return server.api_server_count or default_api_server_count()


def _start_engine(
    model: ModelSettings, engine: EngineSettings, generation: GenerationSettings, media: MediaSettings, count: int
):
    """The pt engine of a text model in its own process (the server's event loop and the engine then never
    share a GIL), with sockets for `count` API servers; other models and backends in this process (see
    `runs_in_engine_process`)."""
    from swiftops.engines.process.client import EngineProcessClient, runs_in_engine_process

    if runs_in_engine_process(model, engine):
        return EngineProcessClient(model, engine, generation, media, api_server_count=count)
    from swiftops.engines.factory import build_engine

    return build_engine(model, engine, generation, media, serving=True)
