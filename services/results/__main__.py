"""python -m services.results: the result service (Kafka consumer group and the query gRPC API)."""

from __future__ import annotations

from services.common.contracts.product_classification.v1 import results_pb2, results_pb2_grpc
from services.common.grpc_security import server_credentials
from services.common.grpc_server import GrpcServer
from services.common.kafka import ConsumeLoop, make_consumer, make_producer, send_event
from services.common.lifecycle import run_until_signalled
from services.common.logs import configure_logging
from services.common.metrics import start_metrics_server
from services.common.tracing import configure_tracing
from services.common.settings import KafkaSettings
from services.results.core import ClassificationRecorder
from services.results.fusion import parse_weights
from services.results.grpc_api import ClassificationResultsServicer
from services.results.kafka_worker import PredictionHandler
from services.results.settings import ResultsSettings
from services.results.store import ClassificationStore
from services.results.taxonomy import Taxonomies


def main() -> None:
    settings = ResultsSettings()
    kafka = KafkaSettings()
    start_metrics_server(settings.metrics_port)
    configure_tracing("results", settings.otlp_endpoint)
    configure_logging("results", settings.log_level)

    store = ClassificationStore(settings.database_url)
    producer = make_producer(kafka, "results")

    def publish(event):
        return send_event(producer, kafka.topics.listing_classified, event.classification.listing_id, event)

    recorder = ClassificationRecorder(store, Taxonomies.load(settings.taxonomy_path),
                                      parse_weights(settings.fusion_weights), publish, settings.candidate_count)
    consumer = make_consumer(kafka, settings.consumer_group, "results", settings.max_batch_predictions)
    loop = ConsumeLoop("results", consumer, [kafka.topics.prediction_made, kafka.topics.processing_failed],
                       PredictionHandler(recorder, producer, kafka.topics), producer,
                       max_batch=settings.max_batch_predictions)
    server = GrpcServer(settings.grpc_address,
                        [(results_pb2_grpc.add_ClassificationResultsServicer_to_server,
                          ClassificationResultsServicer(recorder, settings.watch_poll_s),
                          results_pb2.DESCRIPTOR.services_by_name["ClassificationResults"].full_name)],
                        max_workers=settings.grpc_workers, credentials=server_credentials(settings.server_tls()))

    def start() -> None:
        store.start()
        server.start()
        loop.start()

    def stop() -> None:
        loop.stop(settings.shutdown_grace_s)
        server.stop(settings.shutdown_grace_s)
        producer.flush()
        producer.close()
        store.stop()

    run_until_signalled(start, stop, ready=lambda: store.ready() and loop.healthy.is_set(),
                        set_serving=server.set_serving)


if __name__ == "__main__":
    main()
