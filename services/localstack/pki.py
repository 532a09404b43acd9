"""A certificate authority of the local stack's own, for running it with TLS everywhere (StackOptions.tls).

One CA signs one server certificate (for localhost and 127.0.0.1, shared by every server of the stack) and a client
certificate per caller, whose common name is the caller's name (gateway, console, localstack): under mTLS that name
is who the caller is. Keys are written with mode 600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common.grpc_security import TlsFiles


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class LocalPki:
    def __init__(self, folder: Path, ca_name: str = "product-classification local CA"):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        self._ca_name = _name(ca_name)
        ca = self._builder(self._ca_name, self._ca_key).add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(self._ca_key, hashes.SHA256())
        self.ca_file = folder / "ca.pem"
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.server = self._issue("server", server=True)
        self._clients: dict[str, TlsFiles] = {}

    def _builder(self, subject: x509.Name, key) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.timezone.utc)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(self._ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=2)))

    def _issue(self, common_name: str, server: bool) -> TlsFiles:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._builder(_name(common_name), key).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True)
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            usage = ExtendedKeyUsageOID.SERVER_AUTH
        else:
            usage = ExtendedKeyUsageOID.CLIENT_AUTH
        certificate = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False).sign(
            self._ca_key, hashes.SHA256())
        cert_file, key_file = self.folder / f"{common_name}.pem", self.folder / f"{common_name}.key"
        cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        os.chmod(key_file, 0o600)
        return TlsFiles(cert_file=cert_file, key_file=key_file, ca_file=self.ca_file)

    def client(self, caller: str) -> TlsFiles:
        """What a caller needs: the CA to check servers by, and its own certificate and key."""
        if caller not in self._clients:
            self._clients[caller] = self._issue(caller, server=False)
        return self._clients[caller]

    def server_env(self, prefix: str) -> dict[str, str]:
        """A gRPC service's settings for TLS with client certificates required and checked (AUTH_MODE=mtls)."""
        return {f"{prefix}_TLS_CERT_FILE": str(self.server.cert_file), f"{prefix}_TLS_KEY_FILE": str(self.server.key_file),
                f"{prefix}_TLS_CLIENT_CA_FILE": str(self.ca_file), f"{prefix}_AUTH_MODE": "mtls"}
