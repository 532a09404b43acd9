"""TLS and mutual TLS through the project's own server and channel builders, and API-key authentication."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr

from services.common.contracts.product_classification.v1 import results_pb2, results_pb2_grpc
from services.common.grpc_security import (ApiKeyInterceptor, TlsFiles, new_api_key, parse_api_keys, secure_channel,
                                           server_credentials)
from services.common.grpc_server import GrpcServer


def _write_key_and_cert(folder: Path, name: str, cert: x509.Certificate, key) -> tuple[Path, Path]:
    key_path, cert_path = folder / f"{name}.key", folder / f"{name}.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def _certificate(subject: str, issuer_name, issuer_key, key, ca: bool, san: str | None = None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA, a server certificate for 'localhost' and a client certificate, all signed by the CA."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = _certificate("test CA", ca_name, ca_key, ca_key, ca=True)
    _, ca_path = _write_key_and_cert(folder, "ca", ca, ca_key)
    files = {"ca": ca_path}
    for name, san in (("server", "localhost"), ("client", None), ("gateway", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        files[f"{name}_key"], files[f"{name}_cert"] = _write_key_and_cert(
            folder, name, _certificate(name, ca_name, ca_key, key, ca=False, san=san), key)
    return files


class Results(results_pb2_grpc.ClassificationResultsServicer):
    def GetClassification(self, request, context):
        from services.common.contracts.product_classification.v1 import common_pb2

        return common_pb2.Classification(listing_id=request.listing_id)


class AsyncioResults(results_pb2_grpc.ClassificationResultsServicer):
    async def GetClassification(self, request, context):
        from services.common.contracts.product_classification.v1 import common_pb2

        return common_pb2.Classification(listing_id=request.listing_id)


@contextlib.contextmanager
def serving(tls: TlsFiles, interceptors=(), on_asyncio: bool = False) -> Iterator[str]:
    """A real GrpcServer (or AsyncioGrpcServer) with the given TLS and interceptors; yields its address."""
    from services.common.grpc_server import AsyncioGrpcServer

    kind, servicer = (AsyncioGrpcServer, AsyncioResults()) if on_asyncio else (GrpcServer, Results())
    server = kind("localhost:0", [(results_pb2_grpc.add_ClassificationResultsServicer_to_server, servicer,
                                   "product_classification.v1.ClassificationResults")],
                  credentials=server_credentials(tls), interceptors=interceptors)
    server.set_serving(True)
    server.start()
    try:
        yield f"localhost:{server.port}"
    finally:
        server.stop(1)


def get(channel, metadata=()) -> str:
    request = results_pb2.GetClassificationRequest(listing_id="tls-1")
    return results_pb2_grpc.ClassificationResultsStub(channel).GetClassification(request, timeout=5,
                                                                                   metadata=metadata).listing_id


def test_tls_end_to_end(pki):
    with serving(TlsFiles(cert_file=pki["server_cert"], key_file=pki["server_key"])) as address:
        with secure_channel(address, TlsFiles(ca_file=pki["ca"])) as channel:
            assert get(channel) == "tls-1"
        with grpc.insecure_channel(address) as plaintext:
            with pytest.raises(grpc.RpcError) as raised:
                get(plaintext)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate(pki):
    server_tls = TlsFiles(cert_file=pki["server_cert"], key_file=pki["server_key"], ca_file=pki["ca"])
    with serving(server_tls) as address:
        client = TlsFiles(ca_file=pki["ca"], cert_file=pki["client_cert"], key_file=pki["client_key"])
        with secure_channel(address, client) as channel:
            assert get(channel) == "tls-1"
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        with secure_channel(address, TlsFiles(ca_file=pki["ca"])) as no_certificate:
            with pytest.raises(grpc.RpcError) as raised:
                get(no_certificate)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_api_keys_over_tls(pki):
    keys = parse_api_keys(SecretStr("shop-a=aaaaaaaaaaaaaaaaaaaa,shop-b=bbbbbbbbbbbbbbbbbbbb"))
    server_tls = TlsFiles(cert_file=pki["server_cert"], key_file=pki["server_key"])
    with serving(server_tls, [ApiKeyInterceptor(keys)]) as address:
        with secure_channel(address, TlsFiles(ca_file=pki["ca"])) as channel:
            assert get(channel, [("authorization", "Bearer bbbbbbbbbbbbbbbbbbbb")]) == "tls-1"
            assert get(channel, [("x-api-key", "aaaaaaaaaaaaaaaaaaaa")]) == "tls-1"
            for metadata, reason in (((), "required"), ((("authorization", "Bearer wrong-key-wrong-key"),), "not valid")):
                with pytest.raises(grpc.RpcError) as raised:
                    get(channel, metadata)
                assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED and reason in raised.value.details()
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes need no key


def test_short_or_malformed_keys_are_refused_at_start():
    with pytest.raises(ValueError):
        parse_api_keys(SecretStr("shop-a=short"))
    with pytest.raises(ValueError):
        ApiKeyInterceptor({})


def test_a_method_named_for_one_caller_is_refused_to_the_others_and_one_credential_only():
    from services.common.grpc_security import with_api_key

    keys = {"gateway-key-0123456789": "gateway", "reader-key-0123456789": "reader"}
    with serving(TlsFiles(), [ApiKeyInterceptor(keys, {"GetClassification": frozenset({"gateway"})})]) as address:
        with with_api_key(grpc.insecure_channel(address), "gateway-key-0123456789") as channel:
            assert get(channel) == "tls-1"
        with with_api_key(grpc.insecure_channel(address), SecretStr("reader-key-0123456789")) as channel:
            with pytest.raises(grpc.RpcError) as raised:
                get(channel)
            assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED and "reader" in raised.value.details()
        with grpc.insecure_channel(address) as channel:  # a valid key last does not make two credentials count
            with pytest.raises(grpc.RpcError) as raised:
                get(channel, [("authorization", "Bearer wrong"), ("authorization", "Bearer gateway-key-0123456789")])
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED and "exactly one" in raised.value.details()


@pytest.mark.parametrize("on_asyncio", [False, True], ids=["threads", "asyncio"])
def test_under_mtls_a_method_named_for_one_caller_is_refused_to_other_certificates(pki, on_asyncio):
    """AUTH_MODE=mtls: the certificate's common name is the caller, and method_callers holds as with API keys."""
    from services.common.grpc_security import CertificateCallerInterceptor

    server_tls = TlsFiles(cert_file=pki["server_cert"], key_file=pki["server_key"], ca_file=pki["ca"])
    only_gateway = CertificateCallerInterceptor({"GetClassification": frozenset({"gateway"})})
    with serving(server_tls, [only_gateway], on_asyncio=on_asyncio) as address:
        gateway = TlsFiles(ca_file=pki["ca"], cert_file=pki["gateway_cert"], key_file=pki["gateway_key"])
        with secure_channel(address, gateway) as channel:
            assert get(channel) == "tls-1"
        other = TlsFiles(ca_file=pki["ca"], cert_file=pki["client_cert"], key_file=pki["client_key"])
        with secure_channel(address, other) as channel:
            with pytest.raises(grpc.RpcError) as raised:
                get(channel)
            assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED and "client" in raised.value.details()
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING  # the method is refused, not the caller


def test_mtls_settings_bring_the_certificate_check_only_where_methods_are_named(pki):
    from services.common.grpc_security import CertificateCallerInterceptor
    from services.results.settings import ResultsSettings

    settings = ResultsSettings(auth_mode="mtls", tls_cert_file=pki["server_cert"], tls_key_file=pki["server_key"],
                               tls_client_ca_file=pki["ca"])
    assert [type(i) for i in settings.authentication({"RecordPrediction": frozenset({"gateway"})})] == \
        [CertificateCallerInterceptor]
    assert settings.authentication() == []


def test_a_generated_api_key_never_starts_with_a_dash(monkeypatch):
    """One key in 64 from token_urlsafe starts with '-', which `--api-key KEY` reads as an option (a CI run failed so)."""
    import argparse
    import secrets

    drawn = iter(["-" + "a" * 31, "-" + "b" * 31, "c" * 32])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda nbytes: next(drawn))
    key = new_api_key()
    assert key == "c" * 32
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--api-key")
    assert parser.parse_args(["--api-key", key]).api_key == key
    assert parse_api_keys(SecretStr(f"tool={key}")) == {key: "tool"}
