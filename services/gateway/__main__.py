"""python -m services.gateway: the gRPC front door."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.contracts.product_classification.v1 import gateway_pb2, gateway_pb2_grpc
from services.common.grpc_security import secure_channel, server_credentials, with_api_key
from services.common.grpc_server import MAX_MESSAGE_BYTES, GrpcServer
from services.common.request_arrival import ArrivalPolicy
from services.common.kafka import make_producer, send_event
from services.common.lifecycle import run_until_signalled
from services.common.logs import configure_logging
from services.common.metrics import start_metrics_server
from services.common.tracing import TracingClientInterceptor, configure_tracing
from services.common.settings import KafkaSettings
from services.gateway.core import ListingGateway
from services.gateway.grpc_api import ListingClassifierServicer
from services.gateway.settings import GatewaySettings

_CHANNEL_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]


def _serving(channel: grpc.Channel) -> bool:
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
    return response.status == health_pb2.HealthCheckResponse.SERVING


def main() -> None:
    settings = GatewaySettings()
    kafka = KafkaSettings()
    start_metrics_server("gateway", settings.metrics_port, settings.metrics_address)
    configure_tracing("gateway", settings.otlp_endpoint)
    configure_logging("gateway", settings.log_level)

    preprocessing_channel = grpc.intercept_channel(with_api_key(
        secure_channel(settings.preprocessing_address, settings.downstream_tls(), _CHANNEL_OPTIONS),
        settings.preprocessing_api_key), TracingClientInterceptor())
    results_channel = grpc.intercept_channel(with_api_key(
        secure_channel(settings.results_address, settings.downstream_tls(), _CHANNEL_OPTIONS),
        settings.results_api_key), TracingClientInterceptor())
    producer = make_producer(kafka, "gateway")

    def send_submission(event):
        return send_event(producer, kafka.topics.listing_submitted, event.listing.listing_id, event)

    gateway = ListingGateway(preprocessing_channel, results_channel, send_submission,
                             default_timeout_s=settings.classify_timeout_s, max_in_flight=settings.max_in_flight,
                             max_image_bytes=settings.max_image_bytes)
    server = GrpcServer(settings.grpc_address,
                        [(gateway_pb2_grpc.add_ListingClassifierServicer_to_server,
                          ListingClassifierServicer(gateway, settings.max_listings_per_call,
                                                    max_streams=settings.max_streams,
                                                    stream_idle_s=settings.stream_idle_s,
                                                    max_pending_bytes=settings.max_pending_mb * 1024 * 1024),
                          gateway_pb2.DESCRIPTOR.services_by_name["ListingClassifier"].full_name)],
                        max_workers=settings.grpc_workers, credentials=server_credentials(settings.server_tls()),
                        interceptors=settings.authentication(),
                        arrival=ArrivalPolicy(callers_identified=settings.auth_mode != "none"))

    def ready() -> bool:
        # The submission topic's metadata proves the broker answers (kafka-python closes its bootstrap connection).
        kafka_ready = bool(producer.partitions_for(kafka.topics.listing_submitted))
        return kafka_ready and _serving(preprocessing_channel) and _serving(results_channel)

    def stop() -> None:
        server.stop(settings.shutdown_grace_s)
        producer.flush()
        producer.close()
        preprocessing_channel.close()
        results_channel.close()

    run_until_signalled(server.start, stop, ready=ready, set_serving=server.set_serving)


if __name__ == "__main__":
    main()
