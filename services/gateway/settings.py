"""Gateway settings. Env prefix GATEWAY_ (Kafka's come from KAFKA_)."""

from __future__ import annotations

from pathlib import Path

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.grpc_security import TlsFiles
from services.common.settings import GrpcServiceSettings


class GatewaySettings(GrpcServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_")

    grpc_address: str = Field("0.0.0.0:50051", description="where the ListingClassifier gRPC API listens")
    preprocessing_address: str = Field(description="the preprocessing service's gRPC address; required")
    results_address: str = Field(description="the result service's gRPC address; required")
    auth_mode: Literal["api-key", "mtls", "none"] = Field(
        "api-key", description="api-key: callers send 'authorization: Bearer <key>'; mtls: callers present a client "
        "certificate signed by tls_client_ca_file; none: no authentication (a trusted network only)")
    api_keys: SecretStr | None = Field(None, description="caller=key,... (keys of 16+ characters); required with "
                                       "auth_mode api-key")
    downstream_tls_ca_file: Path | None = Field(None, description="PEM CA of preprocessing's and results' TLS "
                                                "certificates: call them over TLS")
    downstream_tls_cert_file: Path | None = Field(None, description="client certificate for mTLS to them")
    downstream_tls_key_file: Path | None = Field(None, description="key of downstream_tls_cert_file")
    classify_timeout_s: float = Field(30.0, description="deadline of a synchronous classification when the caller "
                                      "sets none (a shorter caller deadline wins)")
    max_in_flight: int = Field(64, description="synchronous classifications at once; more get RESOURCE_EXHAUSTED")
    max_listings_per_call: int = Field(100, description="listings in one ClassifyListings call")
    max_image_bytes: int = Field(20 * 1024 * 1024, description="inline images larger than this are refused")
    grpc_workers: int = Field(32, description="concurrent gRPC calls")
    shutdown_grace_s: float = Field(20.0, description="time to finish calls in flight on SIGTERM")
    metrics_port: int = Field(9101, description="Prometheus metrics on http://0.0.0.0:PORT/metrics; 0 turns it off")
    otlp_endpoint: str | None = Field(None, description="OTLP gRPC endpoint for traces, e.g. http://collector:4317; "
                                      "unset: no spans are exported (trace ids still appear in the logs)")
    log_level: str = "INFO"

    def downstream_tls(self) -> TlsFiles:
        return TlsFiles(cert_file=self.downstream_tls_cert_file, key_file=self.downstream_tls_key_file,
                        ca_file=self.downstream_tls_ca_file)

    @model_validator(mode="after")
    def _authentication_is_configured(self) -> "GatewaySettings":
        if self.auth_mode == "api-key" and not self.api_keys:
            raise ValueError("GATEWAY_API_KEYS is required with GATEWAY_AUTH_MODE=api-key (or choose mtls or none)")
        if self.auth_mode == "mtls" and not (self.tls_cert_file and self.tls_client_ca_file):
            raise ValueError("GATEWAY_AUTH_MODE=mtls needs GATEWAY_TLS_CERT_FILE, _KEY_FILE and _CLIENT_CA_FILE")
        return self
