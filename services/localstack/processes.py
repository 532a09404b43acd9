"""Starting and stopping the local stack's child processes, and finding free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


class StartupError(RuntimeError):
    """A local server did not become ready; the message says which and ends with its log's tail."""


_handed_out: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before by this process (the OS may offer a just-released port again)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ChildProcess:
    """A server process of the local stack, with its output in a log file; stop() ends its whole process group."""

    def __init__(self, name: str, command: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.name = name
        self.command = command
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                        start_new_session=True)
        log.close()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_until(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Polls ready() until it holds; raises StartupError with the log's tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running():
                raise StartupError(f"{self.name} exited before {what}:\n{log_tail(self.log_path)}")
            try:
                if ready():
                    return
            except Exception:  # noqa: BLE001  (not ready yet, whatever the client raised)
                pass
            time.sleep(0.1)
        raise StartupError(f"{self.name} not {what} within {timeout_s:.0f} s:\n{log_tail(self.log_path)}")

    def signal(self, signum: int) -> None:
        if self.running():
            os.killpg(self.process.pid, signum)

    def stop(self, grace_s: float = 10.0) -> None:
        if not self.running():
            return
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.process.wait(5)
