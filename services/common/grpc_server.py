"""A gRPC server with health checking (grpc.health.v1) and reflection, and a start/stop lifecycle."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.anonymous_streams import AnonymousStreamLimit, AnonymousStreamPolicy, AsyncAnonymousStreamLimit
from services.common.metrics import MetricsInterceptor
from services.common.request_arrival import ArrivalPolicy, AsyncRequestArrivalDeadline, RequestArrivalDeadline
from services.common.tracing import TracingServerInterceptor

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 32 * 1024 * 1024
# A connection that has not finished its HTTP/2 (and TLS) handshake by then is closed (gRPC's default: 120 s, during
# which sockets opened and left silent each hold a file descriptor of the service).
HANDSHAKE_TIMEOUT_MS = 10_000
# Streams one connection may have open at once (HTTP/2 MAX_CONCURRENT_STREAMS; gRPC's default: no limit); clients
# queue calls past it on their side. A thread-pool server runs at most its workers (32) at once, and the result
# service lets one caller hold 50 watch streams. Without it, one connection opening streams and resetting each at
# once (the HTTP/2 "rapid reset") grew a thread-pool server to 1 GB in 20 s and had 36 of 38 health checks fail
# meanwhile (the asyncio server: all 41); with it, about 100 MB and every check answered (test_http2_abuse.py).
MAX_STREAMS_PER_CONNECTION = 100

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
    if inspect.isasyncgenfunction(behavior) and not streaming_request:  # a response stream served on grpc.aio
        async def guarded_async_stream(request, context):
            if isinstance(request, _Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
            async for response in behavior(request, context):
                yield response
        return guarded_async_stream
    if streaming_request and (inspect.isasyncgenfunction(behavior) or inspect.iscoroutinefunction(behavior)):
        async def checked_async(requests, context):
            async for request in requests:
                if isinstance(request, _Malformed):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
                yield request

        if inspect.isasyncgenfunction(behavior):
            async def guarded_async_streams(requests, context):
                async for response in behavior(checked_async(requests, context), context):
                    yield response
            return guarded_async_streams

        async def guarded_async_requests(requests, context):
            return await behavior(checked_async(requests, context), context)
        return guarded_async_requests
    if streaming_request:
        def guarded_stream(requests, context):
            def checked():
                for request in requests:
                    if isinstance(request, _Malformed):
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
                    yield request
            return behavior(checked(), context)
        return guarded_stream

    if inspect.iscoroutinefunction(behavior):
        async def guarded_async(request, context):
            if isinstance(request, _Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
            return await behavior(request, context)
        return guarded_async

    if getattr(behavior, "experimental_non_blocking", False):  # answers later through a callback, holding no thread
        def guarded_non_blocking(request, context, send_response_callback=None):
            if isinstance(request, _Malformed):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
            behavior(request, context, send_response_callback=send_response_callback)
        guarded_non_blocking.experimental_non_blocking = True
        return guarded_non_blocking

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
    instead of waiting in the thread pool's queue until its deadline passes. A call's request message must arrive
    soon after its headers (`arrival`, request_arrival.py), so silent calls cannot hold those workers; by default
    callers count as identified when authentication interceptors are given. Health watches and reflection streams,
    open to anyone, are bounded apart (`anonymous`, anonymous_streams.py): a watch holds no worker once its request
    has come, and reflection takes at most a sixteenth of them, for at most 10 s each.
    """

    def __init__(self, address: str, services: Sequence[ServiceRegistration], max_workers: int = 16,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, credentials: grpc.ServerCredentials | None = None,
                 interceptors: Sequence[grpc.ServerInterceptor] = (), arrival: ArrivalPolicy | None = None,
                 anonymous: AnonymousStreamPolicy | None = None):
        self.address = address
        arrival = arrival or ArrivalPolicy(callers_identified=bool(interceptors))
        self.anonymous = anonymous or AnonymousStreamPolicy(max_workers)
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.so_reuseport", 0), ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
                   ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION)]
        self.max_workers = max_workers
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=options,
                                  interceptors=[MetricsInterceptor(), AnonymousStreamLimit(self.anonymous),
                                                *interceptors, RequestArrivalDeadline(arrival),
                                                TracingServerInterceptor(), MalformedRequestInterceptor()],
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


class AsyncHealth(health_pb2_grpc.HealthServicer):
    """grpc.health.v1 on grpc.aio. grpcio's own asyncio servicer drops a service's watchers when any one of them
    leaves, so the others never heard of a change again: a client balancing on health went on sending to a replica
    that had said NOT_SERVING. Here every watch waits on one event, replaced at each change, and nothing is kept per
    service name a caller makes up."""

    def __init__(self):
        self._status: dict[str, int] = {}
        self._changed = asyncio.Event()

    async def set(self, service: str, status: int) -> None:
        self._status[service] = status
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def Check(self, request, context):
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no service named {request.service[:100]!r} here")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request, context):
        last = None
        while True:
            changed = self._changed  # taken before the status is read, so a change in between is not missed
            status = self._status.get(request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            await changed.wait()


class _OnAsyncio(grpc.aio.ServerInterceptor):
    """Runs one of the interceptors above (each wraps a handler, sync or asyncio) on a grpc.aio server."""

    def __init__(self, inner: grpc.ServerInterceptor):
        self.inner = inner

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        return self.inner.intercept_service(lambda _details: handler, handler_call_details)


class _ThreadBound(grpc.aio.ServerInterceptor):
    """Blocking (thread-pool) calls beyond the pool's size are refused at once with RESOURCE_EXHAUSTED, on the event
    loop, instead of queueing for a thread until their deadline; asyncio streams are not counted (they hold none).

    A call takes its place when its request message arrives (grpc.aio reads it on the loop, then hands the call to a
    thread), not when its headers do: a call whose message never came, or that was cancelled before, used to keep
    its place for ever, and as many of them as threads refused every blocking call of the replica from then on."""

    def __init__(self, threads: int):
        self.threads = threads
        self.busy = 0
        self._lock = threading.Lock()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith("/grpc."):
            return handler
        kind = next((k for k in ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
                     if getattr(handler, k)), None)
        behaviour = getattr(handler, kind) if kind else None
        if behaviour is None or inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour):
            return handler
        if self.busy >= self.threads:
            async def refuse(_request, context):
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{self.threads} calls are in "
                                    "progress, the most this replica runs at once; retry later")
            if kind == "unary_unary":
                return handler._replace(unary_unary=refuse)
            return handler  # (no blocking streaming methods are served this way)
        if handler.request_streaming:
            return handler  # (none are served this way: their requests would be read in the thread)
        deserialize = handler.request_deserializer

        def take_place(data):  # on the loop, once, as the message arrives
            request = deserialize(data) if deserialize else data
            with self._lock:
                self.busy += 1
            return request

        def counted(request, context):
            try:
                return behaviour(request, context)
            finally:
                with self._lock:
                    self.busy -= 1
        return handler._replace(**{kind: counted, "request_deserializer": take_place})


class AsyncioGrpcServer:
    """GrpcServer's interface on grpc.aio, in an event loop of its own thread: asyncio handlers (streams that wait,
    such as watch streams) hold no thread, so a thousand of them cost no more than their sockets; blocking handlers
    run in a pool of max_workers threads and are refused at once past it."""

    def __init__(self, address: str, services: Sequence[ServiceRegistration], max_workers: int = 16,
                 max_streams: int = 1000, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 credentials: grpc.ServerCredentials | None = None,
                 interceptors: Sequence[grpc.ServerInterceptor] = (), arrival: ArrivalPolicy | None = None,
                 anonymous: AnonymousStreamPolicy | None = None):
        self.address = address
        arrival = arrival or ArrivalPolicy(callers_identified=bool(interceptors))
        self.anonymous = anonymous or AnonymousStreamPolicy(max_workers)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="grpc-asyncio", daemon=True)
        self._thread.start()
        self.pool = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc")
        self.service_names = [name for _, _, name in services]

        async def build():
            options = [("grpc.max_receive_message_length", max_message_bytes),
                       ("grpc.max_send_message_length", max_message_bytes), ("grpc.so_reuseport", 0),
                       ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
                       ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION)]
            chain = [_OnAsyncio(MetricsInterceptor()), AsyncAnonymousStreamLimit(self.anonymous)] + [
                _OnAsyncio(i) for i in interceptors] + [
                AsyncRequestArrivalDeadline(arrival, self.pool), _ThreadBound(max_workers),
                _OnAsyncio(TracingServerInterceptor()), _OnAsyncio(MalformedRequestInterceptor())]
            # health watches and reflection streams have places of their own (anonymous_streams.py)
            server = grpc.aio.server(migration_thread_pool=self.pool, options=options, interceptors=chain,
                                     maximum_concurrent_rpcs=max_workers + max_streams + self.anonymous.extra_calls)
            health_servicer = AsyncHealth()
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
            for add, servicer, _ in services:
                add(servicer, server)
            reflection.enable_server_reflection([*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME],
                                                server)
            port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
            return server, health_servicer, port

        self.server, self.health, self.port = self.run(build())
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {address}")
        self.set_serving(False)

    def run(self, coroutine, timeout_s: float | None = 30.0):
        """Runs a coroutine on the server's loop from any thread and returns its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING

        async def apply():
            for name in ["", *self.service_names]:
                await self.health.set(name, status)
        self.run(apply())

    def start(self) -> None:
        self.run(self.server.start())
        log.info("gRPC server (asyncio) listening", extra={"address": self.address, "port": self.port})

    def stop(self, grace_s: float) -> None:
        """Stops taking calls, lets calls in flight finish within the grace period (streams are cancelled)."""
        self.set_serving(False)
        try:
            self.run(self.server.stop(grace_s), timeout_s=grace_s + 5)
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
