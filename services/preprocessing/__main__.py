"""python -m services.preprocessing: the preprocessing service (Kafka consumer group and gRPC API)."""

from __future__ import annotations

import sys

from services.common.contracts.product_classification.v1 import preprocessing_pb2, preprocessing_pb2_grpc
from services.common.dead_letters import unreadable_dead_letterer
from services.common.grpc_security import server_credentials
from services.common.grpc_server import GrpcServer
from services.common.request_arrival import ArrivalPolicy
from services.common.kafka import ConsumeLoop, make_consumer, make_producer
from services.common.lifecycle import run_until_signalled
from services.common.logs import configure_logging
from services.common.metrics import start_metrics_server
from services.common.tracing import configure_tracing
from services.common.settings import KafkaSettings
from services.preprocessing.core import ListingPredictor, preprocessing_limits
from services.preprocessing.grpc_api import ImagePredictorServicer
from services.preprocessing.kafka_worker import SubmittedListingHandler
from services.preprocessing.settings import PreprocessingSettings
from services.preprocessing.triton_models import TritonClassifier


def main() -> None:
    settings = PreprocessingSettings()
    settings.check_authentication("PREPROCESSING")  # here, not in the settings: operator tools read them without keys
    kafka = KafkaSettings()
    start_metrics_server("preprocessing", settings.metrics_port, settings.metrics_address)
    configure_tracing("preprocessing", settings.otlp_endpoint)
    configure_logging("preprocessing", settings.log_level)

    try:
        model_names = settings.called_models()
    except ValueError as error:
        print(f"preprocessing: refusing to start: {error}", file=sys.stderr)
        sys.exit(2)
    classifier = TritonClassifier(settings.triton_url, model_names, settings.triton_timeout_s,
                                  settings.parallel_model_calls,
                                  ensemble=settings.ensemble_model if settings.decode_in_triton else None,
                                  pixels_ensemble=settings.pixels_ensemble.strip() or None,
                                  shared_memory=settings.triton_shared_memory,
                                  access_token=settings.triton_token())
    predictor = ListingPredictor(classifier, *preprocessing_limits(settings), settings.decode_threads,
                                 settings.fetch_threads, settings.thumbnail_size, settings.decode_in_triton,
                                 settings.thumbnail_in_triton, int(settings.prediction_cache_mb * 1024 * 1024))
    producer = make_producer(kafka, "preprocessing")
    consumer = make_consumer(kafka, settings.consumer_group, "preprocessing", settings.max_batch_listings)
    loop = ConsumeLoop("preprocessing", consumer, [kafka.topics.listing_submitted],
                       SubmittedListingHandler(predictor, producer, kafka.topics, settings.max_deferrals), producer,
                       max_batch=settings.max_batch_listings, batch_linger_s=settings.batch_linger_s,
                       on_unreadable=unreadable_dead_letterer(producer, kafka.topics.processing_failed, "preprocessing"))
    server = GrpcServer(settings.grpc_address,
                        [(preprocessing_pb2_grpc.add_ImagePredictorServicer_to_server, ImagePredictorServicer(predictor),
                          preprocessing_pb2.DESCRIPTOR.services_by_name["ImagePredictor"].full_name)],
                        max_workers=settings.grpc_workers, credentials=server_credentials(settings.server_tls()),
                        interceptors=settings.authentication(),
                        arrival=ArrivalPolicy(callers_identified=settings.auth_mode != "none"))

    def start() -> None:
        classifier.start()
        server.start()
        loop.start()

    def stop() -> None:
        loop.stop(settings.shutdown_grace_s)  # finish the batch in hand, commit, leave the group
        server.stop(settings.shutdown_grace_s)
        producer.flush()
        producer.close()
        predictor.stop()
        classifier.stop()

    run_until_signalled(start, stop, ready=lambda: classifier.ready() and loop.healthy.is_set(),
                        set_serving=server.set_serving, fatal=loop.fatal)


if __name__ == "__main__":
    main()
