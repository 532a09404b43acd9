"""Result service settings. Env prefix RESULTS_ (Kafka's come from KAFKA_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import GrpcServiceSettings

CONFIG = Path(__file__).with_name("config")
REFERENCE_DATA = Path(__file__).with_name("reference_data")


class ResultsSettings(GrpcServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RESULTS_")

    grpc_address: str = Field("0.0.0.0:50053", description="where the ClassificationResults gRPC API listens")
    database_url: str = Field("sqlite:///.run/results.sqlite3",
                              description="sqlite:///PATH (embedded default) or postgresql://user@host/db")
    fusion_path: Path = Field(Path("triton_models/fusion.json"),
                              description="the fusion weights, review threshold and labels the trainer published "
                              "beside the model versions (in the model repository Triton serves)")
    fusion_weights: str = Field("", description="model=weight,...: used only when fusion_path does not exist "
                                "(then the models' labels are not checked)")
    marketplaces_dir: Path = Field(CONFIG / "marketplaces", description="one *.toml file per marketplace")
    customs_path: Path = Field(CONFIG / "customs.toml", description="Shopify category -> HS headings")
    reference_data_dir: Path = Field(REFERENCE_DATA, description="Shopify taxonomy, Google mapping, HS 2022 files")
    candidate_count: int = Field(3, description="candidates returned with each classification")
    consumer_group: str = Field("product-classification.results",
                                description="consumer group on the prediction-made and processing-failed topics")
    max_batch_predictions: int = Field(64, description="events handled per batch")
    watch_poll_s: float = Field(0.5, description="how often watch streams look for rows other replicas stored")
    grpc_workers: int = Field(32, description="gRPC calls served at once, watch streams apart (they hold no "
                              "thread); more are refused at once with RESOURCE_EXHAUSTED")
    max_watch_streams: int = Field(2000, description="watch streams open at once on this replica (each is a queue "
                                   "on the server's event loop, fed by one poll of the store)")
    max_watch_streams_per_caller: int = Field(50, description="watch streams one caller may hold open")
    watch_lookback_s: float = Field(10.0, description="how far back each watch poll looks for rows another "
                                    "writer committed late (a sequence taken earlier, committed later)")
    correction_sweep_s: float = Field(5.0, description="how often corrections whose publication failed (the broker "
                                      "was away) are published again")
    publisher_id: str = Field("", max_length=200, description="this replica's name in the store's publication claims: "
                              "unique among live replicas and the same when the same replica restarts (the pod "
                              "name), so a replica that crashed takes its claimed rows back at once instead of "
                              "waiting out their lease; empty: a new name per process (host, pid, random)")
    shutdown_grace_s: float = Field(20.0, description="time to finish work in flight on SIGTERM")
    metrics_port: int = Field(9103, description="Prometheus metrics on http://METRICS_ADDRESS:PORT/metrics; 0 turns it "
                              "off")
    otlp_endpoint: str | None = Field(None, description="OTLP gRPC endpoint for traces, e.g. http://collector:4317; "
                                      "unset: no spans are exported (trace ids still appear in the logs)")
    log_level: str = "INFO"

