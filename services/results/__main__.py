"""python -m services.results: the result service (Kafka consumer group and the query gRPC API)."""

from __future__ import annotations

import sys

from services.common.contracts.product_classification.v1 import results_pb2, results_pb2_grpc
from services.common.dead_letters import unreadable_dead_letterer
from services.common.grpc_security import server_credentials
from services.common.grpc_server import AsyncioGrpcServer
from services.common.request_arrival import ArrivalPolicy
from services.common.kafka import ConsumeLoop, make_consumer, make_producer, send_event
from services.common.lifecycle import run_until_signalled
from services.common.logs import configure_logging
from services.common.metrics import start_metrics_server
from services.common.tracing import configure_tracing
from services.common.settings import KafkaSettings
from services.results.core import ClassificationRecorder, default_publisher_id
from services.common.fusion_file import FusionConfig
from services.results.grpc_api import ClassificationResultsServicer, StreamLimits
from services.results.kafka_worker import PredictionHandler
from services.results.operator_store import OperatorStore
from services.results.review import ReviewDesk
from services.results.watch import WatchHub
from services.results.settings import ResultsSettings
from services.results.store import ClassificationStore
from services.results.taxonomy import ConfigurationError, Taxonomies


# The writes, each its one caller's alone: the synchronous path's (any other caller could store and publish a category
# of its choice) and the operators' corrections (the console authenticates the operator).
METHOD_CALLERS = {"RecordPrediction": frozenset({"gateway"}), "RecordCorrection": frozenset({"console"})}


def load_configuration(settings: ResultsSettings) -> tuple[FusionConfig, Taxonomies]:
    """The fusion the trainer published and the marketplaces' taxonomies, checked against each other."""
    fusion = FusionConfig.from_settings(settings.fusion_path, settings.fusion_weights)
    taxonomies = Taxonomies.load(settings.marketplaces_dir, settings.customs_path, settings.reference_data_dir,
                                 list(fusion.labels) if fusion.labels else None, fusion.review_threshold or 0.0)
    return fusion, taxonomies


def main() -> None:
    settings = ResultsSettings()
    settings.check_authentication("RESULTS")  # here, not in the settings: operator tools read them without keys
    kafka = KafkaSettings()
    start_metrics_server("results", settings.metrics_port, settings.metrics_address)
    configure_tracing("results", settings.otlp_endpoint)
    configure_logging("results", settings.log_level)

    try:
        fusion, taxonomies = load_configuration(settings)
    except (ConfigurationError, ValueError) as error:
        print(f"results: refusing to start: {error}", file=sys.stderr)
        sys.exit(2)
    store = ClassificationStore(settings.database_url)
    producer = make_producer(kafka, "results")

    def publish(event):
        return send_event(producer, kafka.topics.listing_classified, event.classification.listing_id, event,
                          event_id=event.event_id)

    def publish_correction(event):
        return send_event(producer, kafka.topics.listing_corrected, event.correction.listing_id, event,
                          event_id=event.event_id)

    operators = OperatorStore(store)
    publisher_id = settings.publisher_id or default_publisher_id()
    desk = ReviewDesk(operators, taxonomies, publish_correction, publisher_id)
    recorder = ClassificationRecorder(store, taxonomies, fusion.weights, publish, settings.candidate_count,
                                      thumbnails=operators, publisher_id=publisher_id, verdicts=desk)
    consumer = make_consumer(kafka, settings.consumer_group, "results", settings.max_batch_predictions)
    loop = ConsumeLoop("results", consumer, [kafka.topics.prediction_made, kafka.topics.processing_failed],
                       PredictionHandler(recorder, producer, kafka.topics), producer,
                       max_batch=settings.max_batch_predictions,
                       on_unreadable=unreadable_dead_letterer(producer, kafka.topics.processing_failed, "results"))
    hub = WatchHub(store, settings.watch_poll_s, settings.watch_lookback_s)
    recorder.on_stored.append(hub.notify)
    # asyncio: watch streams wait without holding threads; the blocking calls run in grpc_workers threads.
    server = AsyncioGrpcServer(
        settings.grpc_address,
        [(results_pb2_grpc.add_ClassificationResultsServicer_to_server,
          ClassificationResultsServicer(
              recorder, hub, StreamLimits(settings.max_watch_streams, settings.max_watch_streams_per_caller), desk),
          results_pb2.DESCRIPTOR.services_by_name["ClassificationResults"].full_name)],
        max_workers=settings.grpc_workers, max_streams=settings.max_watch_streams,
        credentials=server_credentials(settings.server_tls()), interceptors=settings.authentication(METHOD_CALLERS),
        arrival=ArrivalPolicy(callers_identified=settings.auth_mode != "none"))

    def start() -> None:
        store.start()
        hub.start(server.loop)
        server.start()
        loop.start()
        desk.run_sweeper(settings.correction_sweep_s)

    def stop() -> None:
        desk.stop()
        loop.stop(settings.shutdown_grace_s)
        server.stop(settings.shutdown_grace_s)
        hub.stop()
        producer.flush()
        producer.close()
        store.stop()

    run_until_signalled(start, stop, ready=lambda: store.ready() and loop.healthy.is_set(),
                        set_serving=server.set_serving, fatal=loop.fatal)


if __name__ == "__main__":
    main()
