"""Settings shared by the services, read from the environment once in each service's main and passed in."""

from __future__ import annotations

from pathlib import Path

from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.grpc_security import ApiKeyInterceptor, CertificateCallerInterceptor, TlsFiles, parse_api_keys


class Topics(BaseModel):
    """Kafka topic names; each says what it carries and its payload version."""

    listing_submitted: str = "product-classification.listing-submitted.v1"
    prediction_made: str = "product-classification.prediction-made.v1"
    listing_classified: str = "product-classification.listing-classified.v1"
    processing_failed: str = "product-classification.processing-failed.v1"
    listing_corrected: str = "product-classification.listing-corrected.v1"


# The topics take batches of at most 16 MiB (max.message.bytes in docker-compose.yml); listing events carry JPEG,
# which compresses by a few per cent, so a real batch unfolds to about its own size (kafka_decompression.py).
MAX_DECOMPRESSED_BATCH_BYTES = 64 * 1024 * 1024


class KafkaSettings(BaseSettings):
    """How to reach the Kafka cluster. Env prefix KAFKA_ (e.g. KAFKA_BOOTSTRAP_SERVERS)."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", env_nested_delimiter="__")

    bootstrap_servers: str = Field(description="host:port[,host:port...] of the brokers; required")
    security_protocol: str = Field("PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    sasl_mechanism: str | None = Field(None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = Field(None, description="CA of the brokers' certificates (SSL, SASL_SSL)")
    ssl_certfile: str | None = Field(None, description="client certificate, for brokers that require one")
    ssl_keyfile: str | None = Field(None, description="key of ssl_certfile")
    session_timeout_ms: int = Field(6000, description="consumer group session timeout")
    heartbeat_interval_ms: int = Field(1000, description="consumer group heartbeat interval")
    max_decompressed_batch_bytes: int = Field(
        MAX_DECOMPRESSED_BATCH_BYTES, ge=1024 * 1024,
        description="a compressed batch that unfolds past this many bytes is not read: dead-lettered with where it "
                    "sits, then moved past (a few KB of zstd can unfold to GBs)")
    topics: Topics = Topics()

    def client_options(self) -> dict:
        """Options every kafka-python client (producer, consumer, admin) takes."""
        options = {"bootstrap_servers": self.bootstrap_servers.split(","), "security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(self, name):
                options[name] = getattr(self, name)
        return options


class GrpcServiceSettings(BaseSettings):
    """What every gRPC service has: TLS for its server, and who may call it. Each subclass sets the env prefix."""

    tls_cert_file: Path | None = Field(None, description="PEM certificate: serve gRPC over TLS")
    tls_key_file: Path | None = Field(None, description="PEM key of tls_cert_file")
    tls_client_ca_file: Path | None = Field(None, description="PEM CA: require client certificates it signed (mTLS)")
    auth_mode: Literal["api-key", "mtls", "none"] = Field(
        "api-key", description="api-key: callers send 'authorization: Bearer <key>'; mtls: callers present a client "
        "certificate signed by tls_client_ca_file; none: no authentication (a trusted network only)")
    api_keys: SecretStr | None = Field(None, description="caller=key,... (keys of 16+ characters); required with "
                                       "auth_mode api-key. Internal services name their callers: 'gateway' is the "
                                       "only one allowed the gateway's own methods")
    metrics_address: str = Field("0.0.0.0", description="the address the metrics port listens on: every address "
                                 "of the host (for Prometheus) by default; 127.0.0.1: this host only")

    def server_tls(self) -> TlsFiles:
        return TlsFiles(cert_file=self.tls_cert_file, key_file=self.tls_key_file, ca_file=self.tls_client_ca_file)

    def check_authentication(self, prefix: str) -> None:
        if self.auth_mode == "api-key" and not self.api_keys:
            raise ValueError(f"{prefix}_API_KEYS is required with {prefix}_AUTH_MODE=api-key (or choose mtls or none)")
        if self.auth_mode == "mtls" and not (self.tls_cert_file and self.tls_client_ca_file):
            raise ValueError(f"{prefix}_AUTH_MODE=mtls needs {prefix}_TLS_CERT_FILE, _KEY_FILE and _CLIENT_CA_FILE")

    def authentication(self, method_callers: dict[str, frozenset[str]] | None = None
                       ) -> list:
        """api-key: an interceptor checks each call's key (and who may call what); mtls: the TLS handshake checked
        the certificate, and an interceptor checks who may call what by the certificate's common name."""
        if self.auth_mode == "api-key":
            return [ApiKeyInterceptor(parse_api_keys(self.api_keys), method_callers)]
        if self.auth_mode == "mtls" and method_callers:
            return [CertificateCallerInterceptor(method_callers)]
        return []
