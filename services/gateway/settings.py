"""Gateway settings. Env prefix GATEWAY_ (Kafka's come from KAFKA_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.grpc_security import TlsFiles
from services.common.settings import GrpcServiceSettings


class GatewaySettings(GrpcServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_")

    grpc_address: str = Field("0.0.0.0:50051", description="where the ListingClassifier gRPC API listens")
    preprocessing_address: str = Field(description="the preprocessing service's gRPC address; required")
    results_address: str = Field(description="the result service's gRPC address; required")
    preprocessing_api_key: SecretStr | None = Field(None, description="the gateway's key at the preprocessing "
                                                    "service (its PREPROCESSING_API_KEYS names it 'gateway')")
    results_api_key: SecretStr | None = Field(None, description="the gateway's key at the result service (its "
                                              "RESULTS_API_KEYS names it 'gateway')")
    downstream_tls_ca_file: Path | None = Field(None, description="PEM CA of preprocessing's and results' TLS "
                                                "certificates: call them over TLS")
    downstream_tls_cert_file: Path | None = Field(None, description="client certificate for mTLS to them")
    downstream_tls_key_file: Path | None = Field(None, description="key of downstream_tls_cert_file")
    classify_timeout_s: float = Field(30.0, description="deadline of a synchronous classification when the caller "
                                      "sets none (a shorter caller deadline wins)")
    max_in_flight: int = Field(24, description="synchronous classifications at once; more get RESOURCE_EXHAUSTED "
                               "at once. Must be below grpc_workers, so the refusal itself always finds a thread")
    max_listings_per_call: int = Field(100, description="listings in one ClassifyListings call (and pending at once "
                                       "on one ClassifyListingStream)")
    max_streams: int = Field(6, description="ClassifyListingStream calls open at once (each holds a gRPC worker while "
                             "open); more get RESOURCE_EXHAUSTED. max_in_flight + max_streams must be below "
                             "grpc_workers, so streams never take the workers unary calls and refusals need")
    stream_idle_s: float = Field(60.0, description="a ClassifyListingStream with nothing pending is closed "
                                 "(UNAVAILABLE) when no listing has arrived on it for this long")
    max_image_bytes: int = Field(20 * 1024 * 1024, description="inline images larger than this are refused")
    max_pending_mb: int = Field(256, ge=32, description="listings every call holds at once, from when they are read "
                                "until their outcome is known (a listing holds its photo's bytes): a stream's next "
                                "listing waits for room, a unary call finding none is refused with "
                                "RESOURCE_EXHAUSTED. Besides it, the gRPC layer holds each call's message while it "
                                "arrives: up to grpc_workers of them, 32 MB each at most")
    grpc_workers: int = Field(32, description="concurrent gRPC calls")
    shutdown_grace_s: float = Field(20.0, description="time to finish calls in flight on SIGTERM")
    metrics_port: int = Field(9101, description="Prometheus metrics on http://METRICS_ADDRESS:PORT/metrics; 0 turns it "
                              "off")
    otlp_endpoint: str | None = Field(None, description="OTLP gRPC endpoint for traces, e.g. http://collector:4317; "
                                      "unset: no spans are exported (trace ids still appear in the logs)")
    log_level: str = "INFO"

    def downstream_tls(self) -> TlsFiles:
        return TlsFiles(cert_file=self.downstream_tls_cert_file, key_file=self.downstream_tls_key_file,
                        ca_file=self.downstream_tls_ca_file)

    @model_validator(mode="after")
    def _authentication_is_configured(self) -> "GatewaySettings":
        self.check_authentication("GATEWAY")
        if self.max_in_flight + self.max_streams >= self.grpc_workers:
            raise ValueError(f"GATEWAY_MAX_IN_FLIGHT ({self.max_in_flight}) + GATEWAY_MAX_STREAMS "
                             f"({self.max_streams}) must be below GATEWAY_GRPC_WORKERS ({self.grpc_workers}): past "
                             "the workers, calls would queue instead of being refused")
        if self.max_streams < 1 or self.stream_idle_s <= 0:
            raise ValueError("GATEWAY_MAX_STREAMS must be at least 1 and GATEWAY_STREAM_IDLE_S above 0")
        return self
