"""`run_deploy(DeployArguments(...))`: a `swiftops deploy` server in a child process for the length of a `with`
block, as ms-swift's client demos start one:

    with run_deploy(DeployArguments(model='Qwen/Qwen2.5-0.5B-Instruct', verbose=False, log_interval=-1)) as port:
        client = InferClient(port=port)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class DeployArguments:
    """`swiftops deploy`'s flags as keyword arguments (ms-swift's names, e.g. model=, adapters=, infer_backend=)."""

    def __init__(self, **flags: Any) -> None:
        self.flags = flags

    def argv(self) -> list[str]:
        args: list[str] = []
        for name, value in self.flags.items():
            if value is None:
                continue
            if isinstance(value, (list, tuple)):
                args += [f"--{name}", *map(str, value)]
            elif isinstance(value, dict):
                args += [f"--{name}", json.dumps(value)]
            else:
                args += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
        return args


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextmanager
def run_deploy(args: DeployArguments, ready_timeout: float = 600.0) -> Iterator[int]:
    """Start the server, wait until /ready answers, yield its port; stop it when the block ends."""
    import httpx

    host = str(args.flags.get("host") or "127.0.0.1")
    port = int(args.flags.get("port") or _free_port(host))
    flags = {k: v for k, v in args.flags.items() if k not in ("host", "port")}
    argv = [
        sys.executable,
        "-m",
        "swiftops.cli.main",
        "deploy",
        "--host",
        host,
        "--port",
        str(port),
        *DeployArguments(**flags).argv(),
    ]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        try:
            deadline = time.monotonic() + ready_timeout
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(
                        f"swiftops deploy exited with status {process.returncode}: "
                        f"{log.read().decode(errors='replace')[-2000:]}"
                    )
                try:
                    if httpx.get(f"http://{host}:{port}/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"swiftops deploy was not ready within {ready_timeout:.0f}s")
                time.sleep(0.2)
            yield port
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
