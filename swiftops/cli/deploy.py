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
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("swiftops.server.body").setLevel(logging.INFO if verbose else logging.WARNING)


def _bind(server: ServerSettings):
    from swiftops.server.lifecycle import bind_socket

    try:
        return bind_socket(server.host, server.port)
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
    sock = _bind(server)
    try:
        import uvicorn

        from swiftops.server.app import create_app
        from swiftops.server.http_guard import guarded_protocol
        from swiftops.server.lifecycle import DrainingServer

        engine = _start_engine(model, engine_settings, generation, media)
        try:
            app = create_app(engine, server)
            # Keep-alive longer than clients' and load balancers' idle timeouts (httpx 5 s, AWS ALB 60 s): with
            # uvicorn's 5 s, a client reusing a pooled connection just as the server closes it gets a reset
            # (seen in the reliability soak: 1-2 per 4000 requests).
            config = uvicorn.Config(
                app,
                log_level="info",
                access_log=False,  # ours logs tokens and latency
                timeout_graceful_shutdown=server.shutdown_timeout,
                lifespan="on",
                timeout_keep_alive=server.keep_alive_timeout,
                http=guarded_protocol(server.header_timeout, server.send_timeout),
            )
            logging.getLogger("swiftops.server").info(
                "serving %s on http://%s:%d/v1 (models: %s)",
                app.state.ctx.models.served_name,
                server.host,
                server.port,
                ", ".join(app.state.ctx.models.names),
            )
            lifecycle = app.state.ctx.lifecycle
            DrainingServer(config, lifecycle).run(sockets=[sock])
        finally:
            engine.close()
    finally:
        sock.close()
    if lifecycle.engine_failure:  # non-zero: Kubernetes restarts the pod
        logging.getLogger("swiftops.server").error("exiting with status 1: %s", lifecycle.engine_failure)
        sys.exit(1)


def _start_engine(model: ModelSettings, engine: EngineSettings, generation: GenerationSettings, media: MediaSettings):
    """The pt engine of a text model in its own process (the server's event loop and the engine then never
    share a GIL); other models and backends in this process (see `runs_in_engine_process`)."""
    from swiftops.engines.process.client import EngineProcessClient, runs_in_engine_process

    if runs_in_engine_process(model, engine):
        return EngineProcessClient(model, engine, generation, media)
    from swiftops.engines.factory import build_engine

    return build_engine(model, engine, generation, media, serving=True)
