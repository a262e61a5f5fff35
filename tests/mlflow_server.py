"""A real ``mlflow server`` for tests, on 127.0.0.1 only: started in a process group of its
own (the CLI, its web workers, its job runner), waited for, and stopped by its pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    folder: Path  # mlflow.db, artifacts/ and server.log

    @property
    def artifacts(self) -> Path:
        return self.folder / "artifacts"


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on (it was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(folder: Path, *, workers: int = 1) -> Server:
    """Start it and return at once: callers may start other things while it comes up."""
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers), "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", str(folder / "artifacts"),
    ]  # fmt: skip
    with open(folder / "server.log", "wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Server(process, f"http://127.0.0.1:{port}", folder)


def wait_until_up(server: Server, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            log = (server.folder / "server.log").read_text()
            raise RuntimeError(f"mlflow server exited: {log[-2000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server did not answer within {timeout} s")


def stop(server: Server) -> None:
    """The whole process group, by the CLI's pid: SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(server.process.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.process.wait(timeout=wait)
            time.sleep(1)  # the group's other processes exit after the CLI
        except subprocess.TimeoutExpired:
            continue
        try:
            os.killpg(server.process.pid, 0)
        except ProcessLookupError:
            return
