"""The whole system on one machine: broker, Triton on CPU, result store, and the three services as processes.

Used by `make demo`, the integration tests and the benchmarks. start() returns once every part reports ready (gRPC
health SERVING, Triton models ready); stop() ends everything it started, services first.
"""

from __future__ import annotations

import os
import secrets
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.grpc_security import TlsFiles, new_api_key, secure_channel, with_api_key
from services.common.kafka import create_topics
from services.common.settings import KafkaSettings
from services.localstack.broker import LocalBroker
from services.localstack.processes import ChildProcess, free_port
from services.localstack.termination import SigtermAsInterrupt
from services.localstack.triton_cpu import LocalTriton

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


def authenticated_channel(address: str, api_key: str, tls: TlsFiles | None = None) -> grpc.Channel:
    """A channel that sends the API key on every call, over TLS (with tls's client certificate) when tls is given."""
    return with_api_key(secure_channel(address, tls), api_key)


def grpc_serving(address: str, tls: TlsFiles | None = None) -> bool:
    with secure_channel(address, tls) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        return response.status == health_pb2.HealthCheckResponse.SERVING


class ServiceProcess:
    """One service (`python -m services.<name>`) with its environment; ready when its gRPC health says SERVING."""

    def __init__(self, name: str, env: dict[str, str], grpc_port: int, log_path: Path,
                 probe_tls: TlsFiles | None = None):
        self.name = name
        self.probe_tls = probe_tls  # what the readiness check connects with when the stack runs TLS
        self.grpc_port = grpc_port
        self.address = f"127.0.0.1:{grpc_port}"
        prefix = name.split("-")[0].upper()
        self.metrics_url = f"http://127.0.0.1:{env[f'{prefix}_METRICS_PORT']}/metrics"
        self.process = ChildProcess(name, [sys.executable, "-m", f"services.{name.split('-')[0]}"], log_path,
                                    {**os.environ, **env, "PYTHONUNBUFFERED": "1"})

    def start(self, timeout_s: float = 60.0) -> None:
        self.process.start()
        self.wait_serving(timeout_s)

    def wait_serving(self, timeout_s: float = 60.0) -> None:
        self.process.wait_until(lambda: grpc_serving(self.address, self.probe_tls), timeout_s, "SERVING")

    def stop(self, grace_s: float = 20.0) -> None:
        self.process.stop(grace_s)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return response.status == 200
    except OSError:
        return False


class ConsoleProcess:
    """The review console (`python -m services.console`); ready when /healthz answers."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path):
        self.name = "console"
        self.url = f"http://127.0.0.1:{port}"
        self.accounts_path = Path(env["CONSOLE_ACCOUNTS_PATH"])
        self.process = ChildProcess("console", [sys.executable, "-m", "services.console"], log_path,
                                    {**os.environ, **env, "PYTHONUNBUFFERED": "1"})

    def start(self, timeout_s: float = 60.0) -> None:
        self.process.start()
        self.process.wait_until(lambda: http_ok(self.url + "/healthz"), timeout_s, "answering /healthz")

    def add_operator(self, name: str, locale: str = "en") -> str:
        """Creates an operator account with a generated password, and returns the password."""
        from services.console.accounts import OperatorAccounts

        password = secrets.token_urlsafe(15)
        OperatorAccounts(self.accounts_path).add(name, password, locale)
        return password

    def stop(self, grace_s: float = 20.0) -> None:
        self.process.stop(grace_s)


@dataclass
class StackOptions:
    work_dir: Path
    database_url: str | None = None  # default: SQLite in work_dir
    partitions: int = 4
    model_repository: Path = REPOSITORY_ROOT / "triton_models"
    onnx_threads: int = 0  # per model; 0: the cores shared among pixels_ensemble's models (every core without it)
    extra_env: dict[str, str] = field(default_factory=dict)
    console: bool = False  # also start the operators' review console
    console_port: int = 0  # 0: any free port
    broker_link: bool = False  # clients reach the broker through a relay that fault scenarios can cut
    # gRPC over TLS everywhere, mTLS (AUTH_MODE=mtls) at every service, and Kafka over TLS with client certificates
    # (KAFKA_SECURITY_PROTOCOL=SSL), from a CA of the stack's own
    tls: bool = False
    # A Triton already serving model_repository (the GPU bench's, on the GPU): the stack uses it and leaves it running
    triton: LocalTriton | None = None


class LocalStack:
    def __init__(self, options: StackOptions):
        self.options = options
        work = options.work_dir
        work.mkdir(parents=True, exist_ok=True)
        self.triton = options.triton or LocalTriton(options.model_repository, work / "triton", options.onnx_threads)
        self.database_url = options.database_url or f"sqlite:///{work / 'results.sqlite3'}"
        self.services: dict[str, ServiceProcess] = {}
        # Generated per run: callers use gateway_channel() (and results_channel()), which send them.
        self.gateway_api_key = new_api_key()
        # Each internal service knows its callers by key: the gateway, and this stack's own tools.
        self.internal_keys = {service: {caller: new_api_key() for caller in callers}
                              for service, callers in (("results", ("gateway", "console", "localstack")),
                                                       ("preprocessing", ("gateway", "localstack")))}
        self.console: ConsoleProcess | None = None
        self.pki = None
        if options.tls:
            from services.localstack.pki import LocalPki  # cryptography: only for a TLS stack

            self.pki = LocalPki(work / "pki")
        self.broker = LocalBroker(work, with_link=options.broker_link, pki=self.pki)
        self.run_id = secrets.token_hex(4)
        self._started: list = []
        self._sigterm = SigtermAsInterrupt()  # SIGTERM to this process: KeyboardInterrupt (termination.py)

    def client_tls(self, caller: str) -> TlsFiles | None:
        """What a caller connects to the stack's services with: None (plaintext) unless the stack runs TLS."""
        return self.pki.client(caller) if self.pki else None

    @property
    def kafka_settings(self) -> KafkaSettings:
        return self.broker.client_settings("localstack")

    def service_env(self, name: str, grpc_port: int) -> dict[str, str]:
        prefix = name.split("-")[0].upper()
        env = {**self.broker.client_env(prefix.lower()), f"{prefix}_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
               f"{prefix}_METRICS_PORT": str(free_port()), f"{prefix}_METRICS_ADDRESS": "127.0.0.1"}
        if self.pki:
            env.update(self.pki.server_env(prefix))
        if prefix in ("PREPROCESSING", "RESULTS"):
            keys = self.internal_keys[prefix.lower()]
            env[f"{prefix}_API_KEYS"] = ",".join(f"{caller}={key}" for caller, key in keys.items())
            # The fusion published beside the versions this stack's Triton serves.
            env[f"{prefix}_FUSION_PATH"] = str(self.options.model_repository / "fusion.json")
        if prefix == "PREPROCESSING":
            env["PREPROCESSING_TRITON_URL"] = self.triton.grpc_url
            if self.triton.access_token:
                env["PREPROCESSING_TRITON_ACCESS_TOKEN"] = self.triton.access_token
            # CPU Triton shares this machine's few cores: one model at a time beats both at once (see `make bench`).
            env["PREPROCESSING_PARALLEL_MODEL_CALLS"] = "false"
        elif prefix == "RESULTS":
            env["RESULTS_DATABASE_URL"] = self.database_url
            # Unique among live replicas (stacks may share a database), the same when this one restarts, as a pod's
            # name is.
            env["RESULTS_PUBLISHER_ID"] = f"localstack-{self.run_id}-{name}"
        elif prefix == "GATEWAY":
            env["GATEWAY_API_KEYS"] = f"localstack={self.gateway_api_key}"
            env["GATEWAY_PREPROCESSING_ADDRESS"] = self.services["preprocessing"].address
            env["GATEWAY_RESULTS_ADDRESS"] = self.services["results"].address
            env["GATEWAY_RESULTS_API_KEY"] = self.internal_keys["results"]["gateway"]
            env["GATEWAY_PREPROCESSING_API_KEY"] = self.internal_keys["preprocessing"]["gateway"]
            if self.pki:
                downstream = self.pki.client("gateway")
                env.update(GATEWAY_DOWNSTREAM_TLS_CA_FILE=str(downstream.ca_file),
                           GATEWAY_DOWNSTREAM_TLS_CERT_FILE=str(downstream.cert_file),
                           GATEWAY_DOWNSTREAM_TLS_KEY_FILE=str(downstream.key_file))
        return {**env, **self.options.extra_env}

    @property
    def called_models(self) -> list[str]:
        """The models preprocessing calls: those with a weight above zero in the published fusion."""
        from services.common.fusion_file import FUSION_FILE, FusionConfig

        return FusionConfig.load(self.options.model_repository / FUSION_FILE).called_models

    def gateway_channel(self) -> grpc.Channel:
        """A channel to the gateway that authenticates with the stack's API key."""
        return authenticated_channel(self.services["gateway"].address, self.gateway_api_key,
                                     self.client_tls("localstack"))

    def internal_channel(self, service: str, caller: str = "localstack") -> grpc.Channel:
        """A channel to results or preprocessing that authenticates as one of their callers."""
        name = service.split("-")[0]
        return authenticated_channel(self.services[service].address, self.internal_keys[name][caller],
                                     self.client_tls(caller))

    def add_service(self, name: str, extra_env: dict[str, str] | None = None) -> ServiceProcess:
        """Starts another service process (e.g. a second preprocessing worker named 'preprocessing-2'), with
        extra_env over the stack's settings where given."""
        port = free_port()
        service = ServiceProcess(name, {**self.service_env(name, port), **(extra_env or {})}, port,
                                 self.options.work_dir / f"{name}.log", self.client_tls("localstack"))
        self.services[name] = service
        self._started.append(service)  # before start(): one that never becomes ready is stopped too
        service.start()
        return service

    def start_console(self) -> ConsoleProcess:
        port = self.options.console_port or free_port()
        env = {"CONSOLE_HTTP_ADDRESS": f"127.0.0.1:{port}", "CONSOLE_RESULTS_ADDRESS": self.services["results"].address,
               "CONSOLE_RESULTS_API_KEY": self.internal_keys["results"]["console"],
               "CONSOLE_SESSION_SECRET": secrets.token_urlsafe(32),
               "CONSOLE_ACCOUNTS_PATH": str(self.options.work_dir / "console" / "operators.json"),
               **({"CONSOLE_RESULTS_TLS_CA_FILE": str(self.pki.ca_file),
                   "CONSOLE_RESULTS_TLS_CERT_FILE": str(self.pki.client("console").cert_file),
                   "CONSOLE_RESULTS_TLS_KEY_FILE": str(self.pki.client("console").key_file)} if self.pki else {}),
               **{k: v for k, v in self.options.extra_env.items() if k != "CONSOLE_HTTP_ADDRESS"}}
        self.console = ConsoleProcess(env, port, self.options.work_dir / "console.log")
        self._started.append(self.console)
        self.console.start()
        return self.console

    def start(self) -> None:
        self._sigterm.install()
        try:
            self._started.append(self.broker)
            self.broker.start()
            create_topics(self.kafka_settings, self.options.partitions)
            if self.options.triton is None:
                self._started.append(self.triton)
                self.triton.start()
            for name in ("results", "preprocessing", "gateway"):
                self.add_service(name)
            if self.options.console:
                self.start_console()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for part in reversed(self._started):
            try:
                part.stop()
            except Exception:  # noqa: BLE001  (stop everything else regardless)
                pass
        self._started.clear()
        self._sigterm.uninstall()

    def __enter__(self) -> "LocalStack":
        self.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()
