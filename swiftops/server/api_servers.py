"""Several API-server processes in front of one engine process (`swiftops deploy --api_server_count N`), as vLLM's
`--api-server-count`: where one process's CPU (HTTP, SSE, detokenization) is what limits the tokens a second that
clients see, N processes share the listening socket and the work.

The first API server (the `swiftops deploy` process) binds N listening sockets on the port (SO_REUSEPORT: the
kernel spreads connections evenly over them; see lifecycle.bind_sockets), starts the engine process with a pair
of IPC sockets per API server, then starts the N - 1 others (`python -m swiftops.server.api_servers SPEC`, each
with its listening socket as an inherited file descriptor); each attaches to the engine
(`EngineProcessClient.attach`), warms up, and only then accepts connections, so none answers "not ready" beside
a ready one. Admission counts and /metrics are the deployment's (see
swiftops.server.api_server_state).

Failure and shutdown, as for one process: SIGTERM to the first drains them all (it is passed on), and the engine
stops after the last has drained. If the engine process dies every API server fails /health and exits non-zero;
if any API server dies the first exits non-zero too (Kubernetes restarts the pod); if the first dies the others
exit at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

logger = logging.getLogger("swiftops.server")
_EXIT_WAIT = 10.0  # after the drain: how long the others may take to exit before they are killed
_WATCH_SECONDS = 0.5
_READY_WAIT = 600.0  # start-up of a further API server: imports, tokenizer, one warm-up generation


def ready_file(shared_dir: str, index: int) -> str:
    """Made by API server `index` once warmed up, just before it accepts connections."""
    return os.path.join(shared_dir, f"api-server-{index}.ready")


def default_api_server_count(cpus: int | None = None) -> int:
    """One API server per 8 usable cores (`cpus`, default: this process's), 1 to 4: on a 16-core GPU host two
    (the engine process, its GPU threads and the clients' connections need the rest); on a small machine, one."""
    return max(1, min(4, (cpus if cpus is not None else usable_cpus()) // 8))


def usable_cpus() -> int:
    """Cores this process may use: its affinity, and a cgroup v2 CPU quota (a Kubernetes CPU limit) when set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return cores


@dataclass
class WorkerSpec:
    """What a further API-server process needs, as JSON in a file of the IPC directory."""

    slot: dict  # an ApiServerSlot
    server: str  # ServerSettings as JSON
    fd: int  # the listening socket, inherited
    shared_dir: str
    parent_pid: int


class ApiServerPool:
    """The first API server's handle on the others."""

    def __init__(self, engine: object, server_json: str, sockets: list[socket.socket], shared_dir: str) -> None:
        """Start one API-server process per socket of `sockets` (the 2nd, 3rd... of bind_sockets' set)."""
        self._stopping = False
        self.processes: list[subprocess.Popen] = []
        self._ready_files = [ready_file(shared_dir, i) for i in range(1, len(sockets) + 1)]
        slot_of = engine.slot  # type: ignore[attr-defined]
        for index, sock in enumerate(sockets, start=1):
            spec = WorkerSpec(asdict(slot_of(index)), server_json, sock.fileno(), shared_dir, os.getpid())
            path = os.path.join(shared_dir, f"api-server-{index}.json")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                json.dump(asdict(spec), f)  # may hold the API key: the file is private, the directory too
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "swiftops.server.api_servers", path],
                    pass_fds=(sock.fileno(),),
                    start_new_session=False,
                )
            )
        logger.info("started %d more API-server processes: %s", len(sockets), [p.pid for p in self.processes])

    def wait_ready(self, engine_failure: Callable[[], str | None], timeout: float = _READY_WAIT) -> None:
        """Block until every other API server has warmed up (so that this one, which starts serving after, is
        never ready beside one that is not). Raises EngineError when one exits first or the engine dies."""
        from swiftops.protocol import EngineError

        deadline = time.monotonic() + timeout
        waiting = dict(zip(self._ready_files, self.processes, strict=True))
        while waiting:
            for path, process in list(waiting.items()):
                if os.path.exists(path):
                    del waiting[path]
                elif process.poll() is not None:
                    raise EngineError(
                        f"API-server process {process.pid} exited with status {process.returncode} while starting; "
                        "see the log above"
                    )
            failure = engine_failure()
            if failure:
                raise EngineError(failure)
            if waiting and time.monotonic() > deadline:
                raise EngineError(f"{len(waiting)} API-server process(es) not ready within {timeout:.0f}s")
            time.sleep(0.05)

    def on_death(self, on_death: Callable[[str], object]) -> None:
        """`on_death(reason)` (on a watcher thread) when another API server exits unless we stopped it."""

        def run() -> None:
            while not self._stopping:
                for process in self.processes:
                    if process.poll() is not None and not self._stopping:
                        on_death(f"API-server process {process.pid} exited with status {process.returncode}")
                        return
                time.sleep(_WATCH_SECONDS)

        threading.Thread(target=run, name="swiftops-api-server-watch", daemon=True).start()

    def drain(self) -> None:
        """SIGTERM to each: they stop accepting and finish their requests (up to --shutdown_timeout)."""
        self._stopping = True
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        """Wait for every one to exit; kill what is left after `timeout` seconds."""
        self._stopping = True
        deadline = time.monotonic() + timeout
        for process in self.processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _watch_parent(parent_pid: int) -> None:
    """Exit when the first API server is gone (SIGKILL included): the engine process goes with it."""
    while os.getppid() == parent_pid:
        time.sleep(_WATCH_SECONDS)
    os._exit(1)


def worker_main(spec_path: str) -> int:
    """A further API-server process: attach to the engine, warm up, then serve the inherited socket."""
    with open(spec_path) as f:
        spec = WorkerSpec(**json.load(f))
    os.unlink(spec_path)  # it may hold the API key
    threading.Thread(target=_watch_parent, args=(spec.parent_pid,), name="swiftops-parent-watch", daemon=True).start()

    from swiftops.engines.process.client import ApiServerSlot, EngineProcessClient
    from swiftops.protocol.settings import ServerSettings
    from swiftops.server.api_server_state import SharedState
    from swiftops.server.app import create_app
    from swiftops.server.lifecycle import Lifecycle, configure_logging, serve

    settings = ServerSettings.model_validate_json(spec.server)
    configure_logging(settings.verbose)
    shared = SharedState(spec.shared_dir).join()
    sock = socket.socket(fileno=spec.fd)
    engine = EngineProcessClient.attach(ApiServerSlot(**spec.slot))
    try:
        lifecycle = Lifecycle()
        asyncio.run(lifecycle.warm_up(engine))  # before accepting: never "not ready" beside a ready process
        app = create_app(engine, settings, shared=shared, lifecycle=lifecycle)
        open(ready_file(spec.shared_dir, spec.slot["index"]), "w").close()
        lifecycle = serve(app, settings, sock)
    finally:
        engine.close()
        sock.close()
    if lifecycle.engine_failure:
        logger.error("exiting with status 1: %s", lifecycle.engine_failure)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1]))
