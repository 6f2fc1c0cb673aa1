"""`ServerProcess`: run `swiftops deploy` as a child process on a free loopback port and wait until ready.

For tests (the server suite, the web UI's browser tests, reliability soaks) and the serving benchmarks
(benchmarks/serving.py, profile_server.py), which import it from here as `tests.server_process`: a test
harness, not part of the package.

    with ServerProcess(["--model", model_dir, "--api_key", "k"]) as server:
        httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer k"})
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ServerProcess:
    def __init__(
        self,
        args: Sequence[str],
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
        ready_timeout: float = 120.0,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.args = [
            sys.executable,
            "-m",
            "swiftops.cli.main",
            "deploy",
            "--host",
            host,
            "--port",
            str(self.port),
            *args,
        ]
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        self.ready_timeout = ready_timeout
        # kept open for the server's lifetime (its stdout and stderr) and removed by stop(): no `with` block fits
        self.log = tempfile.NamedTemporaryFile(prefix="swiftops-server-", suffix=".log", delete=False)  # noqa: SIM115
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerProcess:
        self.process = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server was not ready within {self.ready_timeout}s:\n{self.output()}")

    def output(self) -> str:
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def terminate(self) -> None:
        """SIGTERM: the server drains in-flight requests, then exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process is None:
            return None
        self.terminate()
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        os.unlink(self.log.name)
