"""gRPC transport security: TLS (optionally mutual) for servers and clients, and API-key authentication.

API keys are compared in constant time and never logged; callers are named in logs by the key's owner.
"""

from __future__ import annotations

import hmac
import inspect
import logging
import secrets
from pathlib import Path

import grpc
from pydantic import BaseModel, SecretStr

log = logging.getLogger(__name__)

# Probes and tooling must work without a key.
UNAUTHENTICATED_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                           "/grpc.reflection.v1.ServerReflection/")


class TlsFiles(BaseModel):
    """PEM files. Server: cert + key, and client_ca to require client certificates (mTLS).
    Client: ca to verify the server, cert + key to present a client certificate."""

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials | None:
    if not tls.cert_file:
        return None
    if not tls.key_file:
        raise ValueError("a TLS certificate needs its key file")
    root = tls.ca_file.read_bytes() if tls.ca_file else None
    return grpc.ssl_server_credentials([(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
                                       root_certificates=root, require_client_auth=root is not None)


def secure_channel(address: str, tls: TlsFiles | None, options: list | None = None) -> grpc.Channel:
    """TLS when tls.ca_file is set (with a client certificate when cert and key are), plaintext otherwise."""
    if tls is None or not tls.ca_file:
        return grpc.insecure_channel(address, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca_file.read_bytes(),
        private_key=tls.key_file.read_bytes() if tls.key_file else None,
        certificate_chain=tls.cert_file.read_bytes() if tls.cert_file else None)
    return grpc.secure_channel(address, credentials, options=options)


def new_api_key(nbytes: int = 24) -> str:
    """A random URL-safe key that never starts with '-': one that did would read as an option on a command line
    (`--api-key -x...` is refused by argparse and most other parsers)."""
    while True:
        key = secrets.token_urlsafe(nbytes)
        if not key.startswith("-"):
            return key


def parse_api_keys(secret: SecretStr | None) -> dict[str, str]:
    """'caller-a=key1,caller-b=key2' -> {key: caller}."""
    keys = {}
    for entry in filter(None, (e.strip() for e in (secret.get_secret_value() if secret else "").split(","))):
        caller, _, key = entry.partition("=")
        if not key or len(key) < 16:
            raise ValueError(f"API key of {caller!r} must be given as caller=key, key at least 16 characters")
        keys[key] = caller
    return keys


def _denied(handler, details: str, code: grpc.StatusCode = grpc.StatusCode.UNAUTHENTICATED):
    """The same kind of handler (unary or streaming, sync or asyncio) whose behaviour is to answer with the code."""
    def deny(_request, context):
        context.abort(code, details)

    async def deny_async(_request, context):
        await context.abort(code, details)

    async def deny_async_stream(_request, context):
        await context.abort(code, details)
        yield  # pragma: no cover  (an async generator, as the handler it stands for)

    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behaviour = getattr(handler, kind)
        if behaviour:
            if inspect.isasyncgenfunction(behaviour):
                return handler._replace(**{kind: deny_async_stream})
            return handler._replace(**{kind: deny_async if inspect.iscoroutinefunction(behaviour) else deny})
    return handler


class ApiKeyInterceptor(grpc.ServerInterceptor):
    """Requires 'authorization: Bearer <key>' (or 'x-api-key: <key>') on every call but health and reflection.

    method_callers: method name (the part after the last '/') -> the only callers allowed to call it; every other
    caller gets PERMISSION_DENIED (e.g. results' RecordPrediction is the gateway's alone).
    """

    def __init__(self, keys: dict[str, str], method_callers: dict[str, frozenset[str]] | None = None):
        if not keys:
            raise ValueError("API-key authentication needs at least one key")
        self.keys = keys
        self.method_callers = method_callers or {}

    def _caller(self, presented: str) -> str | None:
        found = None
        for key, caller in self.keys.items():  # constant time per key, and every key is compared
            if hmac.compare_digest(key.encode(), presented.encode()):
                found = caller
        return found

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(UNAUTHENTICATED_METHODS):
            return handler
        credentials = [(k.lower(), v) for k, v in handler_call_details.invocation_metadata or ()
                       if k.lower() in ("authorization", "x-api-key")]
        if len(credentials) > 1:  # which one would count is ambiguous: take none
            return _denied(handler, "exactly one credential is allowed (one authorization or x-api-key value)")
        name, value = credentials[0] if credentials else ("", "")
        value = value.decode(errors="replace") if isinstance(value, bytes) else value
        presented = value.strip() if name == "x-api-key" else ""
        if name == "authorization" and value.lower().startswith("bearer "):
            presented = value[7:].strip()
        if not presented:
            return _denied(handler, "an API key is required (authorization: Bearer <key>)")
        caller = self._caller(presented)
        if caller is None:
            log.warning("rejected a call with an unknown API key", extra={"method": handler_call_details.method})
            return _denied(handler, "the API key is not valid")
        allowed = self.method_callers.get(handler_call_details.method.rpartition("/")[2])
        if allowed is not None and caller not in allowed:
            log.warning("refused a caller a method that is not theirs",
                        extra={"method": handler_call_details.method, "caller": caller})
            return _denied(handler, f"{handler_call_details.method} is not open to caller {caller!r}",
                           grpc.StatusCode.PERMISSION_DENIED)
        return handler


def certificate_callers(context) -> set[str]:
    """The names a caller's verified client certificate gives it (its subject's common names); empty without one."""
    try:
        names = context.auth_context().get("x509_common_name", [])
    except Exception:  # noqa: BLE001  (no TLS on this call)
        return set()
    return {n.decode(errors="replace") if isinstance(n, bytes) else n for n in names}


class CertificateCallerInterceptor(grpc.ServerInterceptor):
    """mTLS's counterpart of ApiKeyInterceptor's method_callers: the TLS handshake proved the certificate, and the
    certificate's common name is the caller's name. A method in method_callers answers PERMISSION_DENIED to any
    certificate whose name is not listed (e.g. results' RecordPrediction is the certificate 'gateway''s alone)."""

    def __init__(self, method_callers: dict[str, frozenset[str]]):
        self.method_callers = method_callers

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        allowed = self.method_callers.get(handler_call_details.method.rpartition("/")[2])
        if handler is None or allowed is None:
            return handler
        method = handler_call_details.method

        def refusal(context) -> str | None:
            names = certificate_callers(context)
            if names & allowed:
                return None
            log.warning("refused a certificate a method that is not its own",
                        extra={"method": method, "caller": sorted(names)})
            return f"{method} is not open to the certificate {', '.join(sorted(names)) or '(none)'}"

        def checked(behaviour):
            if inspect.iscoroutinefunction(behaviour):
                async def check_async(request, context):
                    reason = refusal(context)
                    if reason:
                        await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
                    return await behaviour(request, context)
                return check_async
            if inspect.isasyncgenfunction(behaviour):
                async def check_async_stream(request, context):
                    reason = refusal(context)
                    if reason:
                        await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
                    async for response in behaviour(request, context):
                        yield response
                return check_async_stream

            def check(request, context):
                reason = refusal(context)
                if reason:
                    context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
                return behaviour(request, context)
            return check

        return handler._replace(**{kind: checked(getattr(handler, kind)) for kind in
                                   ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
                                   if getattr(handler, kind)})


class ApiKeyMetadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                     grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Client side: sends 'authorization: Bearer <key>' on every call of a channel."""

    def __init__(self, api_key: str):
        self.metadata = ("authorization", f"Bearer {api_key}")

    def _with_key(self, details):
        return details._replace(metadata=list(details.metadata or []) + [self.metadata])

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_key(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_key(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_key(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_key(details), requests)


def with_api_key(channel: grpc.Channel, api_key: SecretStr | str | None) -> grpc.Channel:
    """The channel, sending the key on every call when one is given."""
    if api_key is None:
        return channel
    key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
    return grpc.intercept_channel(channel, ApiKeyMetadata(key)) if key else channel
