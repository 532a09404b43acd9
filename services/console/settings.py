"""Console settings. Env prefix CONSOLE_."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.grpc_security import TlsFiles
from services.console.http_guard import ConnectionLimits


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONSOLE_")

    http_address: str = Field("0.0.0.0:8080", description="where the console's web pages are served (host:port)")
    results_address: str = Field("127.0.0.1:50053", description="the result service's gRPC address")
    results_api_key: SecretStr | None = Field(None, description="the console's key at the result service (its "
                                              "RESULTS_API_KEYS names it 'console', the one caller allowed to record "
                                              "corrections)")
    results_tls_ca_file: Path | None = Field(None, description="PEM CA of the result service's certificate: call it "
                                             "over TLS")
    results_tls_cert_file: Path | None = Field(None, description="client certificate for mTLS to the result service")
    results_tls_key_file: Path | None = Field(None, description="key of results_tls_cert_file")
    results_timeout_s: float = Field(10.0, description="deadline of each call to the result service")
    accounts_path: Path = Field(Path(".run/console/operators.json"),
                                description="the operators' accounts (password hashes), written by "
                                "`python -m services.console add-operator`; shared by every console replica")
    session_secret: SecretStr | None = Field(None, description="signs the session cookies (32+ characters, the "
                                             "same on every replica); required")
    session_ttl_s: int = Field(8 * 3600, description="how long a login lasts")
    tls_cert_file: Path | None = Field(None, description="PEM certificate: serve HTTPS (cookies become Secure)")
    tls_key_file: Path | None = Field(None, description="key of tls_cert_file")
    secure_cookies: bool = Field(False, description="mark cookies Secure although this process serves plain HTTP "
                                 "(behind a proxy that terminates TLS); always on with tls_cert_file")
    login_failures_allowed: int = Field(5, description="failed logins per account before each further attempt "
                                        "must wait, twice as long each time")
    login_failures_allowed_per_address: int = Field(50, description="the same per client address (higher: many "
                                                    "operators can share one office address)")
    login_lockout_max_s: float = Field(900.0, description="the longest wait after repeated failures")
    max_feed_clients: int = Field(200, description="browsers on the live feed at once on this replica")
    header_timeout_s: float = Field(10.0, gt=0, description="a request's headers must arrive within this, or its "
                                    "connection is closed (a client holding sockets open without finishing a "
                                    "request would otherwise fill the server)")
    body_timeout_s: float = Field(30.0, gt=0, description="a request's body must arrive within this after its "
                                  "headers")
    max_connections_per_client: int = Field(64, ge=0, description="connections open at once from one address; one "
                                            "more is answered 429 (0: no limit; behind a proxy every operator "
                                            "shares the proxy's address)")
    default_locale: str = Field("en", description="the language of operators created without one")
    log_level: str = "INFO"

    @property
    def host(self) -> str:
        return self.http_address.rsplit(":", 1)[0] or "0.0.0.0"

    @property
    def port(self) -> int:
        return int(self.http_address.rsplit(":", 1)[1])

    def connection_limits(self) -> ConnectionLimits:
        return ConnectionLimits(header_timeout_s=self.header_timeout_s, body_timeout_s=self.body_timeout_s,
                                per_client=self.max_connections_per_client)

    @property
    def cookies_secure(self) -> bool:
        return self.secure_cookies or self.tls_cert_file is not None

    def results_tls(self) -> TlsFiles:
        return TlsFiles(cert_file=self.results_tls_cert_file, key_file=self.results_tls_key_file,
                        ca_file=self.results_tls_ca_file)

    def check_serving(self) -> None:
        """What serving needs (the add-operator command needs none of it)."""
        secret = self.session_secret.get_secret_value() if self.session_secret else ""
        if len(secret) < 32:
            raise ValueError("CONSOLE_SESSION_SECRET is required: 32 or more random characters, the same on every "
                             "console replica")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("CONSOLE_TLS_CERT_FILE and CONSOLE_TLS_KEY_FILE go together")

    @model_validator(mode="after")
    def _address_is_host_port(self) -> "ConsoleSettings":
        host, _, port = self.http_address.rpartition(":")
        if not port.isdigit():
            raise ValueError(f"CONSOLE_HTTP_ADDRESS must be host:port, got {self.http_address!r}")
        return self
