"""Several API-server processes in front of one engine process (`swiftops deploy --api_server_count N`), as vLLM's
`--api-server-count`: where one process's CPU (HTTP, SSE, detokenization) is what limits the tokens a second that
clients see, N processes share the listening socket and the work.

The first API server (the `swiftops deploy` process) binds N listening sockets on the port (SO_REUSEPORT: the
kernel spreads connections evenly over them; see lifecycle.bind_sockets), starts the engine process with a pair
of IPC sockets per API server, then starts the N - 1 others (`python -m swiftops.server.api_servers`, the spec
on stdin, each with its listening socket as an inherited file descriptor); each attaches to the engine
(`EngineProcessClient.attach`) and warms up. Once all are warm (and the first too) they all start accepting
connections together, so none answers "not ready" beside a ready one. Admission counts and /metrics are the
deployment's (see swiftops.server.api_server_state).

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
from typing import Any

from swiftops.protocol.settings import ServerSettings
from swiftops.server.lifecycle import Lifecycle, configure_logging, serve

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
        with open("/sys/fs/cgroup/cpu.max") as f:  # cgroup v2: "max 100000" or "400000 100000"
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        try:  # cgroup v1: -1 when there is no limit
            with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f, open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as g:
                quota, period = f.read().strip(), g.read().strip()
        except OSError:
            return cores
    try:
        if quota not in ("max", "-1"):
            cores = min(cores, max(1, int(quota) // int(period)))
    except ValueError:
        pass
    return cores


@dataclass
class WorkerSpec:
    """What a further API-server process needs, as JSON on its stdin (it may hold the API key: never on disk)."""

    slot: dict  # an ApiServerSlot
    server: str  # ServerSettings as JSON
    fd: int  # the listening socket, inherited
    shared_dir: str
    parent_pid: int


class ApiServerPool:
    """The first API server's handle on the others."""

    def __init__(self, engine: object, server_json: str, sockets: list[socket.socket], shared_dir: str) -> None:
        """Start one API-server process per socket of `sockets` (the 2nd, 3rd... of bind_sockets' set)."""
        self._stopping = self._draining = False
        self.processes: list[subprocess.Popen] = []
        self._ready_files = [ready_file(shared_dir, i) for i in range(1, len(sockets) + 1)]
        self._go = go_file(shared_dir)
        slot_of = engine.slot  # type: ignore[attr-defined]
        for index, sock in enumerate(sockets, start=1):
            spec = WorkerSpec(asdict(slot_of(index)), server_json, sock.fileno(), shared_dir, os.getpid())
            process = subprocess.Popen(
                [sys.executable, "-m", "swiftops.server.api_servers"], pass_fds=(sock.fileno(),), stdin=subprocess.PIPE
            )
            assert process.stdin is not None  # narrows for mypy: stdin=PIPE
            process.stdin.write(json.dumps(asdict(spec)).encode())
            process.stdin.close()
            self.processes.append(process)
            # Its own copy is the child's now: one left open here would keep taking connections (SO_REUSEPORT
            # hashes new ones to every open socket of the set) that no process serves once the child has gone.
            sock.close()
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
            if waiting:
                time.sleep(0.05)
        open(self._go, "w").close()  # every one is warm: all of them start accepting now, this one too

    def on_death(self, on_death: Callable[[str], object]) -> None:
        """`on_death(reason)` (on a watcher thread) when another API server exits unless we stopped it."""

        def run() -> None:
            while not self._stopping:
                for process in self.processes:
                    if process.poll() is not None and not self._stopping:
                        self._stopping = True  # one report: the deployment is ending
                        on_death(f"API-server process {process.pid} exited with status {process.returncode}")
                        return
                time.sleep(_WATCH_SECONDS)

        threading.Thread(target=run, name="swiftops-api-server-watch", daemon=True).start()

    def drain(self) -> None:
        """SIGTERM to each, once: they stop accepting and finish their requests (up to --shutdown_timeout)."""
        if self._draining:
            return  # a second SIGTERM would find uvicorn's handler gone and kill one still exiting
        self._stopping = self._draining = True
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> bool:
        """Wait for every one to exit; kill what is left after `timeout` seconds. True when each exited 0."""
        self._stopping = True
        deadline = time.monotonic() + timeout
        clean = True
        for process in self.processes:
            try:
                clean = process.wait(timeout=max(0.0, deadline - time.monotonic())) == 0 and clean
            except subprocess.TimeoutExpired:
                logger.error("API-server process %d still running %.0fs after the drain: killed", process.pid, timeout)
                process.kill()
                process.wait()
                clean = False
        return clean

    def kill(self) -> None:
        """End every one now (the deployment failed: their requests cannot finish)."""
        self._stopping = True
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            process.wait()


def serve_several(engine: Any, settings: ServerSettings, sockets: list[socket.socket]) -> tuple[Lifecycle, bool]:
    """The first API server of `len(sockets)`: warm up, start the others, wait until all are warm, then serve
    beside them until the drain (passed on to them) ends or a process dies. Returns its lifecycle and whether
    every other API server exited 0."""
    from swiftops.server.api_server_state import SharedState

    # Until uvicorn installs its handlers, SIGTERM ends start-up through the `finally` blocks (the other API
    # servers killed, the engine stopped, the IPC directory removed) instead of killing this process on the spot.
    previous = signal.signal(signal.SIGTERM, _end_start_up)
    pool: ApiServerPool | None = None
    served = clean = False
    try:
        shared = SharedState.create(engine.ipc_dir)
        app = _warm_app(engine, settings, shared)
        lifecycle: Lifecycle = app.state.ctx.lifecycle
        pool = ApiServerPool(engine, settings.model_dump_json(), sockets[1:], shared.directory)
        pool.wait_ready(engine.health_error)
        lifecycle.on_drain.append(pool.drain)
        lifecycle.watch_also(pool)
        signal.signal(signal.SIGTERM, previous)
        lifecycle = serve(app, settings, sockets[0], processes=len(sockets))
        served = True
    finally:
        signal.signal(signal.SIGTERM, previous)
        if pool is not None:
            if not served or lifecycle.engine_failure:
                pool.kill()  # a failed deployment: their requests cannot finish
            else:
                pool.drain()  # a no-op after a drain: they got SIGTERM with ours
                clean = pool.wait(settings.shutdown_timeout + _EXIT_WAIT)
    return lifecycle, clean


def _warm_app(engine: Any, settings: ServerSettings, shared: Any) -> Any:
    """The app of one API server of several, its one warm-up generation done before it accepts a connection: with
    several sockets on the port, a client that saw one process ready must not reach another still warming up."""
    from swiftops.server.app import create_app

    warmed = Lifecycle()
    asyncio.run(warmed.warm_up(engine))
    return create_app(engine, settings, shared=shared, lifecycle=warmed)


def _end_start_up(sig: int, frame: Any) -> None:
    raise SystemExit(128 + sig)


def go_file(shared_dir: str) -> str:
    """Made by the first API server once every other is warm: then all of them start accepting connections."""
    return os.path.join(shared_dir, "api-servers.go")


def _wait_for_go(shared_dir: str, parent_pid: int) -> None:
    while not os.path.exists(go_file(shared_dir)):
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(0.05)


def worker_main() -> int:
    """A further API-server process: attach to the engine, warm up, wait for the others, then serve the inherited
    socket. Its spec comes on stdin."""
    from swiftops.engines.process.client import ApiServerSlot, EngineProcessClient
    from swiftops.engines.process.engine_main import exit_with_parent
    from swiftops.server.api_server_state import SharedState

    spec = WorkerSpec(**json.loads(sys.stdin.buffer.read()))
    # Exit when the first API server is gone (SIGKILL included): the engine process goes with it.
    threading.Thread(
        target=exit_with_parent, args=(spec.parent_pid,), name="swiftops-parent-watch", daemon=True
    ).start()

    settings = ServerSettings.model_validate_json(spec.server)
    configure_logging(settings.verbose)
    shared = SharedState(spec.shared_dir).join()
    sock = socket.socket(fileno=spec.fd)
    engine = EngineProcessClient.attach(ApiServerSlot(**spec.slot))
    try:
        app = _warm_app(engine, settings, shared)
        open(ready_file(spec.shared_dir, spec.slot["index"]), "w").close()
        _wait_for_go(spec.shared_dir, spec.parent_pid)
        lifecycle = serve(app, settings, sock, processes=spec.slot["count"])
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # drained: a late SIGTERM must not turn exit 0 into 143
    finally:
        engine.close()
        sock.close()
    if lifecycle.engine_failure:
        logger.error("exiting with status 1: %s", lifecycle.engine_failure)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
