"""python -m services.common.health_probe HOST:PORT [--tls-ca F [--tls-cert F --tls-key F]]: exits 0 when the gRPC
health check says SERVING.

For container health checks where the orchestrator has no native gRPC probe (docker compose). A service that serves
TLS is checked over TLS (--tls-ca); one that requires client certificates (mTLS) needs one (--tls-cert, --tls-key).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.grpc_security import TlsFiles, secure_channel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("address", nargs="?", default="127.0.0.1:50051")
    parser.add_argument("--tls-ca", type=Path, help="PEM CA of the service's certificate: check over TLS")
    parser.add_argument("--tls-cert", type=Path, help="client certificate, for a service that requires one")
    parser.add_argument("--tls-key", type=Path, help="key of --tls-cert")
    options = parser.parse_args(argv)
    tls = TlsFiles(ca_file=options.tls_ca, cert_file=options.tls_cert, key_file=options.tls_key)
    try:
        with secure_channel(options.address, tls) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3).status
    except grpc.RpcError as error:
        print(f"{options.address}: {error.code().name}")
        return 1
    except OSError as error:
        print(f"{options.address}: cannot read a TLS file: {error}")
        return 1
    print(f"{options.address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
