"""Prometheus metrics every service exposes on its metrics port (0 turns the endpoint off).

Names say what they count; labels are bounded (method, status, topic, model, outcome), never listing ids.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
import socket
import socketserver
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import grpc
from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app

from services.common.address_share import AddressShare

log = logging.getLogger(__name__)

GRPC_REQUESTS = Counter("product_classification_grpc_requests_total", "gRPC calls handled, by method and status code",
                        ["method", "code"])
GRPC_LATENCY = Histogram("product_classification_grpc_request_seconds", "gRPC call latency, by method", ["method"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
KAFKA_CONSUMED = Counter("product_classification_kafka_messages_consumed_total", "Kafka records consumed, by topic",
                         ["topic"])
KAFKA_PRODUCED = Counter("product_classification_kafka_messages_produced_total",
                         "Kafka records produced and acknowledged, by topic", ["topic"])
KAFKA_DEAD_LETTERED = Counter("product_classification_kafka_messages_dead_lettered_total",
                              "records sent to the dead-letter topic, by stage and error kind", ["stage", "error_kind"])
KAFKA_DEFERRED = Counter("product_classification_kafka_messages_deferred_total",
                         "records sent again to the end of their topic (the worker had no room for them before the "
                         "batch's deadline) and acknowledged, by stage", ["stage"])
KAFKA_ASSIGNED_PARTITIONS = Gauge("product_classification_kafka_assigned_partitions",
                                  "partitions this replica's consumer group member holds, by topic", ["topic"])
KAFKA_CONSUMER_LAG = Gauge("product_classification_kafka_consumer_lag",
                           "records of this replica's partitions not yet handled: each partition's high watermark at "
                           "its last fetch less the next record to handle, by topic (summed over replicas, the "
                           "group's backlog)", ["topic"])
KAFKA_BATCH_RETRIES = Counter("product_classification_kafka_batch_retries_total",
                              "polled batches retried after a retryable failure, by consumer loop", ["loop"])
TRITON_BATCH_SIZE = Histogram("product_classification_triton_batch_images", "images per Triton call, by model",
                              ["model"], buckets=(1, 2, 4, 8, 16, 32, 64))
TRITON_LATENCY = Histogram("product_classification_triton_call_seconds", "Triton inference call latency, by model",
                           ["model"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
PREPROCESS_SECONDS = Histogram("product_classification_preprocess_seconds",
                               "fetch + decode + crop + resize time per image",
                               buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5))
PREDICTION_CACHE_LOOKUPS = Counter("product_classification_prediction_cache_lookups_total",
                                   "photos looked up among the models' earlier answers, by outcome (hit, miss)",
                                   ["outcome"])
PREDICTION_CACHE_BYTES = Gauge("product_classification_prediction_cache_bytes",
                               "what the kept answers take (PREPROCESSING_PREDICTION_CACHE_MB bounds it)")
PREDICTION_CACHE_PHOTOS = Gauge("product_classification_prediction_cache_photos", "photos whose answers are kept")
DECODE_MEMORY_HELD = Gauge("product_classification_decode_memory_bytes",
                           "what the decodes running now hold by their estimates (PREPROCESSING_DECODE_MEMORY_MB "
                           "bounds it)")
DECODE_MEMORY_WAITS = Counter("product_classification_decode_memory_waits_total",
                              "decodes that waited for room beside the others, by outcome (decoded, timed_out)",
                              ["outcome"])
END_TO_END_SECONDS = Histogram("product_classification_end_to_end_seconds",
                               "from a listing's submission to its classification being published",
                               buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
CLASSIFICATIONS = Counter("product_classification_classifications_total",
                          "classifications stored, by marketplace and outcome", ["marketplace", "outcome"])
STORE_INDEXES_TO_BUILD = Gauge("product_classification_store_indexes_to_build",
                               "indexes a new release added that this result replica has still to see built (it "
                               "builds them in the background after its start; queries are right without them, "
                               "only slower)")
# 1, by the service's name and release: marks a scrape target as one of ours whatever the scraper named its job
# (compose's job is the service's name, a cluster's pod discovery has one job for every pod), so the down alert can
# say which service stopped answering; and shows which release each replica runs while a rollout goes on.
SERVICE_INFO = Gauge("product_classification_service_info",
                     "1, labelled with the service this process is and the release it runs", ["service", "version"])


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002  (the base class's name)
        pass


class BoundedMetricsServer(socketserver.ThreadingMixIn, WSGIServer):
    """prometheus_client's server starts a thread per connection and waits for its request for ever, so sockets held
    open on the metrics port pile up threads and file descriptors in the service itself. This one serves at most
    `slots` connections at once and `per_address` from one address (one more is closed at once: a scrape is
    retried), and drops a connection that waits `read_timeout_s` for any one read or write, or has not been answered
    within `request_deadline_s` of its arrival: a socket's timeout counts each read afresh, so a caller dripping
    its request a byte every few seconds (or reading the answer as slowly) used to hold a slot for ever, and four
    addresses doing so held them all."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], slots: int = 8, read_timeout_s: float = 5.0, per_address: int = 2,
                 request_deadline_s: float = 10.0):
        handler = type("MetricsRequestHandler", (_QuietHandler,), {"timeout": read_timeout_s})
        self.request_deadline_s = request_deadline_s
        self.slots = threading.BoundedSemaphore(slots)
        self.shares = AddressShare(per_address)
        super().__init__(address, handler)
        self.set_app(make_wsgi_app())

    def process_request(self, request, client_address):
        if not self.shares.enter(client_address[0]):
            self.shutdown_request(request)
            return
        if not self.slots.acquire(blocking=False):
            self.shares.leave(client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(client_address)
            raise

    def handle_error(self, request, client_address):
        log.debug("metrics request from %s dropped", client_address, exc_info=True)  # a timeout or a hang-up

    def process_request_thread(self, request, client_address):
        deadline = threading.Timer(self.request_deadline_s, _cut, (request,))
        deadline.daemon = True
        deadline.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            deadline.cancel()
            self._release(client_address)

    def _release(self, client_address) -> None:
        self.slots.release()
        self.shares.leave(client_address[0])


def _cut(connection: socket.socket) -> None:
    """Ends a connection's reads and writes from another thread (its handler then fails and lets go)."""
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def serve_metrics(port: int, address: str = "0.0.0.0", slots: int = 8, read_timeout_s: float = 5.0,
                  per_address: int = 2, request_deadline_s: float = 10.0) -> BoundedMetricsServer:
    """Serves /metrics on (address, port) from a daemon thread; returns the server (its shutdown() stops it)."""
    family, *_, socket_address = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    server_class = type("MetricsServer", (BoundedMetricsServer,), {"address_family": family})
    server = server_class((socket_address[0], port), slots, read_timeout_s, per_address, request_deadline_s)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


def release() -> str:
    """The installed project's version (the images install it), "unknown" when run from a checkout not installed."""
    try:
        return importlib.metadata.version("product-classification")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def start_metrics_server(service: str, port: int, address: str = "0.0.0.0") -> None:
    """Serves this process's metrics (none when port is 0); `service` is its name in the service_info metric."""
    SERVICE_INFO.labels(service, release()).set(1)
    if port:
        serve_metrics(port, address)


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts every gRPC call by method and final status code, and times it."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def observe(began: float, context) -> None:
            code = context.code() if hasattr(context, "code") else None
            GRPC_REQUESTS.labels(method, (code or grpc.StatusCode.OK).name).inc()
            GRPC_LATENCY.labels(method).observe(time.perf_counter() - began)

        def unary(behaviour):
            if inspect.iscoroutinefunction(behaviour):  # an asyncio handler (grpc.aio)
                async def async_wrapper(request, context):
                    began = time.perf_counter()
                    try:
                        return await behaviour(request, context)
                    finally:
                        observe(began, context)
                return async_wrapper

            def wrapper(request, context):
                began = time.perf_counter()
                try:
                    return behaviour(request, context)
                finally:
                    observe(began, context)
            return wrapper

        def streaming(behaviour):
            if inspect.isasyncgenfunction(behaviour):  # a stream served on grpc.aio
                async def async_wrapper(request, context):
                    began = time.perf_counter()
                    try:
                        async for response in behaviour(request, context):
                            yield response
                    finally:
                        observe(began, context)
                return async_wrapper
            if inspect.iscoroutinefunction(behaviour):  # a grpc.aio stream written with context.write: awaited once
                return unary(behaviour)
            if getattr(behaviour, "experimental_non_blocking", False):  # answers later through a callback
                def non_blocking(request, context, send_response_callback=None):
                    began = time.perf_counter()
                    if not context.add_callback(lambda: observe(began, context)):
                        observe(began, context)
                    behaviour(request, context, send_response_callback=send_response_callback)
                non_blocking.experimental_non_blocking = True
                return non_blocking

            def wrapper(request, context):
                began = time.perf_counter()
                try:
                    yield from behaviour(request, context)
                finally:
                    observe(began, context)
            return wrapper

        if handler.unary_unary:
            return handler._replace(unary_unary=unary(handler.unary_unary))
        if handler.stream_unary:
            return handler._replace(stream_unary=unary(handler.stream_unary))
        if handler.unary_stream:
            return handler._replace(unary_stream=streaming(handler.unary_stream))
        if handler.stream_stream:
            return handler._replace(stream_stream=streaming(handler.stream_stream))
        return handler
