"""OpenTelemetry tracing: W3C trace context carried in gRPC metadata and Kafka record headers.

A listing's path (gateway -> listing-submitted -> preprocessing -> prediction-made -> results -> listing-classified)
is one trace. Spans are exported over OTLP only when an endpoint is set (off by default); trace ids appear in the
JSON logs either way.
"""

from __future__ import annotations

import contextlib
import inspect

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

tracer = trace.get_tracer("product_classification")


def configure_tracing(service: str, otlp_endpoint: str | None) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": f"product-classification-{service}"}))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    trace.set_tracer_provider(provider)


def current_trace_id() -> str | None:
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


# Kafka: headers are a list of (str, bytes).

def inject_headers(headers: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return headers + [(key, value.encode()) for key, value in carrier.items()]


@contextlib.contextmanager
def consuming_span(record, name: str):
    """A span for one consumed record, child of the trace its producer carried in the headers."""
    carrier = {key: value.decode(errors="replace") for key, value in (record.headers or []) if value is not None}
    parent = propagate.extract(carrier)
    with tracer.start_as_current_span(name, context=parent, kind=trace.SpanKind.CONSUMER) as span:
        span.set_attribute("messaging.destination.name", record.topic)
        span.set_attribute("messaging.kafka.partition", record.partition)
        span.set_attribute("messaging.kafka.offset", record.offset)
        yield span


# gRPC

class TracingServerInterceptor(grpc.ServerInterceptor):
    """Continues the caller's trace (traceparent metadata) in a server span around each call."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or not handler.unary_unary or inspect.iscoroutinefunction(handler.unary_unary):
            return handler  # streams keep their own spans inside the servicer
        carrier = {key: value for key, value in (handler_call_details.invocation_metadata or ())
                   if isinstance(value, str)}
        method = handler_call_details.method

        def traced(behaviour):
            def wrapper(request, context):
                token = otel_context.attach(propagate.extract(carrier))
                try:
                    with tracer.start_as_current_span(method, kind=trace.SpanKind.SERVER):
                        return behaviour(request, context)
                finally:
                    otel_context.detach(token)
            return wrapper

        if handler.unary_unary:
            return handler._replace(unary_unary=traced(handler.unary_unary))
        return handler


class TracingClientInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Puts the current trace context into the outgoing call's metadata."""

    def intercept_unary_unary(self, continuation, client_call_details, request):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        metadata = list(client_call_details.metadata or []) + list(carrier.items())
        return continuation(client_call_details._replace(metadata=metadata), request)
