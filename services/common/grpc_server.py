"""A gRPC server with health checking (grpc.health.v1) and reflection, and a start/stop lifecycle."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.metrics import MetricsInterceptor
from services.common.tracing import TracingServerInterceptor

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 32 * 1024 * 1024

# (add_servicer_to_server function, servicer, full service name)
ServiceRegistration = tuple[Callable, object, str]


class _Malformed:
    """What a request that cannot be decoded becomes, so the method answers INVALID_ARGUMENT instead of gRPC's own
    INTERNAL ('Exception deserializing request!')."""

    def __init__(self, error: Exception):
        self.reason = f"the request is not a valid message of this method: {error}"[:300]


def _safe(deserializer):
    def deserialize(data):
        try:
            return deserializer(data)
        except Exception as error:  # noqa: BLE001  (garbage from a caller)
            return _Malformed(error)
    return deserialize


def _refusing_malformed(behavior, streaming_request: bool):
    if streaming_request:
        def guarded_stream(requests, context):
            def checked():
                for request in requests:
                    if isinstance(request, _Malformed):
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
                    yield request
            return behavior(checked(), context)
        return guarded_stream

    def guarded(request, context):
        if isinstance(request, _Malformed):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        return behavior(request, context)
    return guarded


class MalformedRequestInterceptor(grpc.ServerInterceptor):
    """Undecodable requests get INVALID_ARGUMENT with the reason, a definite client error, on every method."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        changes = {"request_deserializer": _safe(handler.request_deserializer)}
        for kind, streaming in (("unary_unary", False), ("unary_stream", False), ("stream_unary", True),
                                ("stream_stream", True)):
            behavior = getattr(handler, kind)
            if behavior:
                changes[kind] = _refusing_malformed(behavior, streaming)
        return handler._replace(**changes)


class GrpcServer:
    """Serves the given services plus health and reflection. Health says SERVING only while ready() holds.

    At most max_workers calls run at once (streams included); one more is refused at once with RESOURCE_EXHAUSTED
    instead of waiting in the thread pool's queue until its deadline passes.
    """

    def __init__(self, address: str, services: Sequence[ServiceRegistration], max_workers: int = 16,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, credentials: grpc.ServerCredentials | None = None,
                 interceptors: Sequence[grpc.ServerInterceptor] = ()):
        self.address = address
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.so_reuseport", 0)]
        self.max_workers = max_workers
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=options,
                                  interceptors=[MetricsInterceptor(), TracingServerInterceptor(), *interceptors,
                                                MalformedRequestInterceptor()],
                                  maximum_concurrent_rpcs=max_workers)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = [name for _, _, name in services]
        for add, servicer, _ in services:
            add(servicer, self.server)
        reflection.enable_server_reflection([*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME],
                                            self.server)
        self.port = (self.server.add_secure_port(address, credentials) if credentials
                     else self.server.add_insecure_port(address))
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {address}")
        self.set_serving(False)

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self.service_names]:
            self.health.set(name, status)

    def start(self) -> None:
        self.server.start()
        log.info("gRPC server listening", extra={"address": self.address, "port": self.port})

    def stop(self, grace_s: float) -> None:
        """Stops taking calls, lets calls in flight finish within the grace period."""
        self.set_serving(False)
        self.server.stop(grace_s).wait(grace_s + 1)
