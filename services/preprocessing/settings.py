"""Preprocessing service settings. Env prefix PREPROCESSING_ (Kafka's come from KAFKA_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.decode_path import THUMBNAIL_SIDE
from services.common.settings import GrpcServiceSettings


class PreprocessingSettings(GrpcServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PREPROCESSING_")

    grpc_address: str = Field("0.0.0.0:50052", description="where the ImagePredictor gRPC API listens")
    triton_url: str = Field(description="Triton's gRPC address, host:port; required")
    model_names: str = Field("", description="the Triton models every image goes through, comma-separated; empty: "
                             "the models whose weight in fusion_path is above zero")
    fusion_path: Path = Field(Path("triton_models/fusion.json"),
                              description="the fusion the trainer published beside the model versions")
    triton_access_token: SecretStr | None = Field(None, description="sent with every call to Triton, for a Triton "
                                                  "started with --grpc-restricted-protocol=...:triton-access-token="
                                                  "<the same> (docker-compose.yml, deploy/base/triton.yaml); unset: "
                                                  "none")
    triton_timeout_s: float = Field(30.0, description="per Triton call")
    consumer_group: str = Field("product-classification.preprocessing",
                                description="consumer group on the listing-submitted topic")
    max_batch_listings: int = Field(32, description="listings polled and sent to Triton together")
    batch_linger_s: float = Field(0.05, description="once listings arrive, how long to wait for a fuller batch")
    max_deferrals: int = Field(5, ge=0, description="times a listing the worker had no room for before its batch's "
                               "deadline (decoding threads, decoding memory) goes to the back of its topic before it "
                               "is dead-lettered as OVERLOADED")
    pixels_ensemble: str = Field("pixels_ensemble", description="the CPU path's Triton ensemble: a batch's squares go "
                                 "to Triton in one request and it runs every called model on them; empty, or not "
                                 "served by Triton for exactly the called models: one request per model")
    parallel_model_calls: bool = Field(True, description="call the models at once (GPU Triton); false runs them "
                                       "one after the other, faster where Triton shares a few CPU cores")
    decode_in_triton: bool = Field(False, description="the GPU decode path: send each photo's bytes (checked from "
                                   "their header) to Triton's ensemble_model, which decodes and resizes them on the "
                                   "GPU (NVIDIA DALI) before the models; false (the default): decode here on the CPU")
    thumbnail_in_triton: bool = Field(True, description="on the GPU decode path, the ensemble also makes the "
                                      "console's thumbnail (up to 224 px) and only its JPEG encoding is done here; "
                                      "false: the photo is decoded here for it (at a reduced scale)")
    triton_shared_memory: bool = Field(False, description="the ensembles' tensors (the batch's photos or squares, "
                                       "the answers and thumbnails) go through system shared memory (/dev/shm) "
                                       "instead of the gRPC message: for a worker on Triton's host that shares its "
                                       "/dev/shm (the same pod, or ipc: service:triton), as the same user; where "
                                       "Triton cannot map it, requests go over gRPC as before")
    ensemble_model: str = Field("photo_ensemble", description="the ensemble of the GPU decode path "
                                "(services/trainer/photo_ensemble.py)")
    max_image_bytes: int = Field(20 * 1024 * 1024, description="larger images are rejected")
    max_image_pixels: int = Field(50_000_000, description="larger images are rejected before decoding")
    image_formats: str = Field("JPEG,PNG,WEBP,GIF,BMP,TIFF,AVIF", description="the only decoders a file reaches "
                               "(Pillow format names); anything else is refused from its header as INVALID_IMAGE")
    decode_timeout_s: float = Field(10.0, description="longest a caller waits for one image's decode")
    max_jpeg_scans: int = Field(100, ge=1, description="JPEGs with more scans are refused from their markers "
                                "(a progressive JPEG has about 10; each scan is another pass over the whole image)")
    max_jpeg_scan_pixels: int = Field(1_200_000_000, ge=1, description="a progressive JPEG's scans times its pixels "
                                      "are at most this (100 scans up to 12 megapixels, 24 at 50): a scan's pass "
                                      "costs in proportion to the pixels; raise it with max_image_pixels")
    max_structure_steps: int = Field(50_000, ge=1, description="images with more pieces of structure read one at a "
                                     "time (JPEG markers and padding before the image data, PNG chunks, GIF blocks "
                                     "before the first picture, TIFF directory entries, strips and tiles, "
                                     "run-length BMP codes) are refused before decoding; a photo has tens, a large "
                                     "PNG a few thousand")
    fetch_timeout_s: float = Field(5.0, description="connect/read timeout for image URLs")
    fetch_total_timeout_s: float = Field(15.0, description="longest one image URL may take, every attempt and byte "
                                         "included; a slower host fails its own listing as SOURCE_TOO_SLOW")
    fetch_proxy: str = Field("", description="http://host:port of an egress proxy for image URLs; empty: direct. "
                             "HTTP_PROXY and the like in the environment are ignored")
    fetch_threads: int = Field(16, description="image URLs fetched at once (waiting on hosts, not the CPU)")
    fetch_attempts: int = Field(3, description="tries per image URL (connection errors, 5xx and 429 are retried)")
    fetch_allowed_hosts: str = Field("", description="host[:port],... allowed to resolve to internal addresses "
                                     "(all others are refused: the SSRF guard)")
    decode_threads: int = Field(2, description="images decoded in parallel")
    decode_memory_mb: int = Field(1024, ge=64, description="memory a worker's decodes may hold at once, by each "
                                  "one's estimate from its header (image URLs are decoded by the threads that fetched "
                                  "them, so up to fetch_threads + decode_threads at once): a decode waits for room, "
                                  "and an image whose decode alone would take more is refused as IMAGE_TOO_LARGE. A "
                                  "49-megapixel WebP takes about 1 GB by the estimate, a 12-megapixel PNG about 80 MB, "
                                  "a JPEG little (it decodes reduced). deploy/ gives a worker 2 GiB: the default leaves "
                                  "1 GiB for the rest (the batch's records, photos and tensors, Kafka's fetches)")
    thumbnail_size: int = Field(THUMBNAIL_SIDE, ge=0, le=512, description="longest side of the small JPEG sent "
                                "with each prediction for the operators' console (kept by the result service); 0: "
                                "none. At one of the models' input sizes (the default, 224, is the served models' size) the "
                                "CPU path's picture for that model is the thumbnail too when the photo needs no crop: "
                                "no second resize")
    prediction_cache_mb: float = Field(64.0, ge=0, description="the models' answers for photos seen before (the "
                                       "same bytes, the same model versions: an edited listing, or one product "
                                       "listed on several marketplaces), kept in memory up to this size and "
                                       "answered without decoding or calling the models (about 8 KB a photo, "
                                       "nearly all of it the thumbnail); 0: off")
    grpc_workers: int = Field(16, description="concurrent gRPC calls")
    shutdown_grace_s: float = Field(20.0, description="time to finish work in flight on SIGTERM")
    metrics_port: int = Field(9102, description="Prometheus metrics on http://METRICS_ADDRESS:PORT/metrics; 0 turns it "
                              "off")
    otlp_endpoint: str | None = Field(None, description="OTLP gRPC endpoint for traces, e.g. http://collector:4317; "
                                      "unset: no spans are exported (trace ids still appear in the logs)")
    log_level: str = "INFO"

    def triton_token(self) -> str:
        """triton_access_token as the Triton client takes it: empty when unset."""
        return self.triton_access_token.get_secret_value() if self.triton_access_token else ""

    def called_models(self) -> list[str]:
        """The models to call: model_names, or those the published fusion gives a weight above zero."""
        if self.model_names.strip():
            return [n.strip() for n in self.model_names.split(",") if n.strip()]
        from services.common.fusion_file import FusionConfig  # the file format is the result service's

        return FusionConfig.load(self.fusion_path).called_models
