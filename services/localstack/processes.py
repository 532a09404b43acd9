"""Starting and stopping the local stack's child processes, and finding free ports."""

from __future__ import annotations

import fcntl
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


class StartupError(RuntimeError):
    """A local server did not become ready; the message says which and ends with its log's tail."""


def _port_range() -> tuple[int, int]:
    """Where the stack's ports come from: LOCALSTACK_PORT_RANGE (e.g. 20000-20099), or 20000 up to the kernel's
    ephemeral range, so that no outgoing connection of any program is handed one of them meanwhile."""
    configured = os.environ.get("LOCALSTACK_PORT_RANGE", "")
    if configured:
        low, _, high = configured.partition("-")
        return int(low), int(high)
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    return 20000, max(20999, ephemeral_low - 1)


_PORT_LOCKS = Path(tempfile.gettempdir()) / "product-classification-ports"
_held_ports: dict[int, int] = {}  # port -> the descriptor holding its lock, for this process's life


def free_port() -> int:
    """A port that is free now and that no other process on this machine has taken through this function.

    Each port handed out is locked machine-wide (an flock on a file per port, released by the kernel when this process
    ends), so two test suites or stacks on one machine never pick the same one, even between one of them choosing a
    port and its server binding it. Ports come from below the ephemeral range (see _port_range)."""
    low, high = _port_range()
    _PORT_LOCKS.mkdir(mode=0o777, exist_ok=True)
    candidates = list(range(low, high + 1))
    random.shuffle(candidates)
    for port in candidates:
        if port in _held_ports:
            continue
        descriptor = os.open(_PORT_LOCKS / f"{port}.lock", os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another process holds it
            os.close(descriptor)
            continue
        with socket.socket() as probe:  # and nothing else on the machine listens on it
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                os.close(descriptor)
                continue
        _held_ports[port] = descriptor
        return port
    raise StartupError(f"no free port left in {low}-{high} (LOCALSTACK_PORT_RANGE)")


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
