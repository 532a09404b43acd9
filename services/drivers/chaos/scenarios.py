"""`make chaos`: fault injection against the local stack, counting every event in and out.

Each scenario returns: events in, classified (distinct listings published), dead-lettered, duplicated (an event id
published more than once, or a listing stored twice), duplicated_in_crash_window (the documented window: the result
service killed between the broker's acknowledgement and the store's mark republishes, with the same event id),
lost (neither classified nor dead-lettered), and the seconds to recover (from the fault to the next classification
published). `make chaos` runs them on the machine's PostgreSQL (a fresh database) and prints one line of JSON last.

The scenarios whose fault must land on work in hand send photos new to the stack (`photos_new_to_the_stack`): the
preprocessing workers answer a photo they have seen from memory, and the rest of such a stream would then be done
within a fraction of a second of the fault's trigger, leaving the fault nothing to interrupt. `model_reloaded` lists
its photos twice, so the answers the workers keep under the version it unloads are met after the reload.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass

import grpc
from google.protobuf.message import DecodeError

from services.common.contracts.product_classification.v1 import common_pb2, events_pb2
from services.localstack.processes import free_port
from services.localstack.stack import REPOSITORY_ROOT, LocalStack, StackOptions
from services.drivers.metrics_reader import scrape, total
from services.drivers.traffic import (MARKETPLACES, TopicReader, large_photo_listings, produce_raw, sample_listings,
                                      submit_listings, submitted_event)
from services.results.store import ClassificationStore


@dataclass
class ScenarioResult:
    scenario: str
    events_in: int
    classified: int
    dead_lettered: int
    duplicated: int
    lost: int
    duplicated_in_crash_window: int = 0
    recovery_s: float | None = None
    published_at_fault: int | None = None  # how far the stream was when the fault hit (mid-stream: 0 < n < in)
    notes: str = ""


class Outcomes:
    """Reads the output and dead-letter topics and the store for a set of listing ids."""

    def __init__(self, stack: LocalStack):
        self.stack = stack
        self.kafka = stack.kafka_settings
        self.classified_reader = TopicReader(self.kafka, self.kafka.topics.listing_classified)
        self.failed_reader = TopicReader(self.kafka, self.kafka.topics.processing_failed)
        self.published: list[tuple[float, events_pb2.ListingClassified]] = []
        self.failed: list[events_pb2.ProcessingFailed] = []

    def poll(self) -> None:
        """Reads whatever arrives on both topics within a short window."""
        for record in self.classified_reader.read(lambda rs: False, 0.3):
            event = events_pb2.ListingClassified.FromString(record.value)
            # When the result service classified it (its clock), not when this reader got to it.
            self.published.append((event.classification.classified_at.ToMicroseconds() / 1e6, event))
        for record in self.failed_reader.read(lambda rs: False, 0.1):
            try:
                self.failed.append(events_pb2.ProcessingFailed.FromString(record.value))
            except DecodeError:
                pass

    def wait_for(self, ids: set[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll()
            done = {e.classification.listing_id for _, e in self.published} | {f.listing_id for f in self.failed}
            if ids <= done:
                break
        self.drain()

    def drain(self, timeout_s: float = 120) -> None:
        """A barrier, not a tail: one listing submitted to every input partition for every output partition (ids
        picked by the partitioner's own hash), each classified and read back. Partitions are handled in order and
        a batch's output is acknowledged before the next batch is taken, so once every barrier listing has been
        read, whatever an earlier event caused on the output topic (a late duplicate too) has been read as well."""
        from kafka.partitioner.default import murmur2

        partitions = self.stack.options.partitions
        run = uuid.uuid4().hex[:6]
        photo = sample_listings(1, seed=151, prefix="chaos-barrier")[0].listing
        listings, targets = [], []
        for source in range(partitions):
            for output in range(partitions):
                number = 0
                while (murmur2(f"chaos-barrier-{run}-{source}-{number}".encode()) & 0x7FFFFFFF) % partitions != output:
                    number += 1
                listing = common_pb2.Listing()
                listing.CopyFrom(photo)
                listing.listing_id = f"chaos-barrier-{run}-{source}-{number}"
                listings.append(listing)
                targets.append(source)
        submit_listings(self.kafka, listings, targets)
        barrier = {listing.listing_id for listing in listings}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll()
            if barrier <= {e.classification.listing_id for _, e in self.published}:
                return
        raise TimeoutError(f"the barrier listings were not all classified within {timeout_s:.0f} s")

    def first_published_after(self, moment: float, ids: set[str]) -> float | None:
        times = [t for t, e in self.published if t > moment and e.classification.listing_id in ids]
        return min(times) - moment if times else None

    def result(self, scenario: str, ids: set[str], events_in: int, recovery_s=None, notes="",
               crash_window: bool = False) -> ScenarioResult:
        """crash_window: the scenario kills the result service, so a republished event id is the documented window."""
        published = Counter(e.classification.listing_id for _, e in self.published
                            if e.classification.listing_id in ids)
        by_event = Counter(e.event_id or e.classification.listing_id for _, e in self.published
                           if e.classification.listing_id in ids)
        republished = {event for event, n in by_event.items() if n > 1}
        dead = {f.listing_id for f in self.failed if f.listing_id in ids}
        store = ClassificationStore(self.stack.database_url)
        store.start()
        try:
            stored_twice = {i for i in published if store.count_for_listing(i) > 1}
        finally:
            store.stop()
        lost = ids - set(published) - dead
        in_window = len(republished) if crash_window else 0
        return ScenarioResult(scenario=scenario, events_in=events_in, classified=len(published),
                              dead_lettered=len(dead), duplicated=len(stored_twice) + len(republished) - in_window,
                              lost=len(lost), duplicated_in_crash_window=in_window,
                              recovery_s=None if recovery_s is None else round(recovery_s, 2), notes=notes)

    def close(self) -> None:
        self.classified_reader.close()
        self.failed_reader.close()


def _inject_when(outcomes: Outcomes, ids: set[str], fraction: float, timeout_s: float = 120) -> int:
    """Waits until the given fraction of the listings is stored, so the fault lands mid-stream; returns how many were
    by then. Progress is read from the store, not the output topic: a reader of the topic starts at its beginning and
    can lag behind by every earlier scenario's events."""
    store = ClassificationStore(outcomes.stack.database_url)
    store.start()
    wanted = sorted(ids)
    try:
        deadline = time.monotonic() + timeout_s
        done = 0
        while time.monotonic() < deadline:
            done = store.count_listings(wanted)
            if done >= fraction * len(ids):
                break
            time.sleep(0.05)
        return done
    finally:
        store.stop()


def _fault_mid_stream(stack: LocalStack, outcomes: Outcomes, samples, fault) -> tuple[int, float]:
    """Streams the listings, runs fault() once a fifth of them is published, then waits for all of them.
    Returns how many were stored when the fault hit, and when it hit (time.time(), the services' clock)."""
    ids = {s.listing.listing_id for s in samples}
    threading.Thread(target=submit_listings, args=(stack.kafka_settings, [s.listing for s in samples]),
                     daemon=True).start()
    at_fault = _inject_when(outcomes, ids, 0.2)
    fault_at = time.time()
    fault()
    outcomes.wait_for(ids, 300)
    return at_fault, fault_at


def triton_killed_and_restarted(stack: LocalStack, count: int = 300) -> ScenarioResult:
    samples = sample_listings(count, seed=61, prefix="chaos-triton", photos_new_to_the_stack=True)
    ids = {s.listing.listing_id for s in samples}
    outcomes = Outcomes(stack)

    def kill_and_restart() -> None:
        stack.triton.kill()
        time.sleep(3)
        stack.triton.start()

    try:
        at_fault, fault_at = _fault_mid_stream(stack, outcomes, samples, kill_and_restart)
        result = outcomes.result("triton killed mid-stream and restarted", ids, count,
                                 outcomes.first_published_after(fault_at + 3, ids),
                                 "Triton SIGKILLed for 3 s; recovery counted from its restart")
        result.published_at_fault = at_fault
        return result
    finally:
        outcomes.close()


def worker_killed(stack: LocalStack, count: int = 200) -> ScenarioResult:
    if "preprocessing-2" not in stack.services:
        stack.add_service("preprocessing-2")
    samples = sample_listings(count, seed=67, prefix="chaos-worker", photos_new_to_the_stack=True)
    ids = {s.listing.listing_id for s in samples}
    outcomes = Outcomes(stack)
    try:
        at_fault, fault_at = _fault_mid_stream(
            stack, outcomes, samples, lambda: stack.services["preprocessing-2"].process.signal(signal.SIGKILL))
        stalled = [t for t, e in outcomes.published if t > fault_at and e.classification.listing_id in ids]
        result = outcomes.result("one of two preprocessing workers SIGKILLed", ids, count,
                                 (max(stalled) - fault_at) if stalled else None,
                                 "recovery: until the last listing was published (the group rebalances after "
                                 "the session timeout)")
        result.published_at_fault = at_fault
        return result
    finally:
        outcomes.close()
        stack.services.pop("preprocessing-2", None)


# A worker that cannot decode a batch of large photos by the batch's deadline (services/common/deferral.py): 0.6 s for
# a batch, room for one decode of large_photo_listings' at a time (a 21-megapixel PNG is about 140 MB by the
# estimate, the largest, 32 megapixels, 202 MB), each about 0.1 s.
WORKER_SHORT_OF_ROOM = {"PREPROCESSING_DECODE_TIMEOUT_S": "0.6", "PREPROCESSING_FETCH_TOTAL_TIMEOUT_S": "0",
                        "PREPROCESSING_DECODE_MEMORY_MB": "250", "PREPROCESSING_DECODE_THREADS": "2",
                        "PREPROCESSING_MAX_DEFERRALS": "50", "PREPROCESSING_PREDICTION_CACHE_MB": "0"}
DEFERRED_METRIC = "product_classification_kafka_messages_deferred_total"


def _metric_reaches(url: str, name: str, least: float, timeout_s: float) -> float:
    """Scrapes until the metric's total is at least `least` (or the time is up); returns the last total."""
    deadline = time.monotonic() + timeout_s
    value = 0.0
    while time.monotonic() < deadline:
        try:
            value = total(scrape(url), name)
        except OSError:
            value = 0.0
        if value >= least:
            break
        time.sleep(0.05)
    return value


def short_worker_killed(stack: LocalStack, count: int = 60) -> ScenarioResult:
    """A second worker, short of room for large photos, defers listings to the back of their partitions (each copy
    acknowledged before its batch is committed) and is SIGKILLed as soon as it has: its partitions go to the first
    worker, which redoes the batch that was in hand and meets the copies too. Every listing ends classified, once."""
    short = stack.add_service("preprocessing-2", WORKER_SHORT_OF_ROOM)
    # The group has rebalanced onto both workers before anything is sent: the second holds partitions of its own.
    _metric_reaches(short.metrics_url, "product_classification_kafka_assigned_partitions", 1, 60)
    samples = large_photo_listings(count, seed=227, prefix="chaos-short")
    ids = {s.listing.listing_id for s in samples}
    outcomes = Outcomes(stack)
    try:
        threading.Thread(target=submit_listings, args=(stack.kafka_settings, [s.listing for s in samples]),
                         daemon=True).start()
        deferred = _metric_reaches(short.metrics_url, DEFERRED_METRIC, 1, 120)
        at_fault = _inject_when(outcomes, ids, 0.0)  # how many were stored by then
        short.process.signal(signal.SIGKILL)
        outcomes.wait_for(ids, 300)
        result = outcomes.result("a worker short of room SIGKILLed as it deferred large photos", ids, count,
                                 notes=json.dumps({"deferred_before_kill": deferred}))
        result.published_at_fault = at_fault
        return result
    finally:
        outcomes.close()
        stack.services.pop("preprocessing-2", None)


def results_restarted(stack: LocalStack, count: int = 200) -> ScenarioResult:
    samples = sample_listings(count, seed=71, prefix="chaos-results", photos_new_to_the_stack=True)
    ids = {s.listing.listing_id for s in samples}
    outcomes = Outcomes(stack)

    stopped = {}

    def restart() -> None:
        began = time.monotonic()
        stack.services["results"].stop()  # SIGTERM: drains, commits, exits (SIGKILL only past the grace period)
        stopped["stop_s"] = round(time.monotonic() - began, 2)
        stopped["exit_code"] = stack.services["results"].process.process.returncode
        stack.services["results"].start()

    try:
        at_fault, fault_at = _fault_mid_stream(stack, outcomes, samples, restart)
        result = outcomes.result("result service restarted mid-stream (SIGTERM)", ids, count,
                                 outcomes.first_published_after(fault_at, ids), json.dumps(stopped))
        result.published_at_fault = at_fault
        return result
    finally:
        outcomes.close()


def produced_twice(stack: LocalStack, count: int = 100) -> ScenarioResult:
    samples = sample_listings(count, seed=73, prefix="chaos-twice")
    ids = {s.listing.listing_id for s in samples}
    events = [submitted_event(s.listing) for s in samples]
    outcomes = Outcomes(stack)
    try:
        for _ in range(2):  # byte-for-byte the same events, twice
            for event in events:
                produce_raw(stack.kafka_settings, stack.kafka_settings.topics.listing_submitted,
                            event.listing.listing_id.encode(), event.SerializeToString())
        outcomes.wait_for(ids, 300)
        return outcomes.result("the same 100 events produced twice", ids, 2 * count,
                               notes="events_in counts both copies; classified counts listings")
    finally:
        outcomes.close()


def poison_interleaved(stack: LocalStack, good_count: int = 60) -> ScenarioResult:
    from services.drivers.chaos.poison import (UndecodableHeaderKey, corrupt_image_listing, oversized_image_listing,
                                               scan_bomb_listing)

    samples = sample_listings(good_count, seed=79, prefix="chaos-poison")
    good_ids = {s.listing.listing_id for s in samples}
    poison = [corrupt_image_listing("chaos-poison-corrupt"), oversized_image_listing("chaos-poison-bomb"),
              scan_bomb_listing("chaos-poison-scans")]
    # A listing sent twice with different images must come out in the order it went in.
    ordered = sample_listings(2, seed=83, prefix="chaos-order")
    ordered[1].listing.listing_id = ordered[0].listing.listing_id
    kafka = stack.kafka_settings
    outcomes = Outcomes(stack)
    try:
        for index, sample in enumerate(samples):
            submit_listings(kafka, [sample.listing])
            if index == 10:
                produce_raw(kafka, kafka.topics.listing_submitted, b"chaos-poison-garbage", b"\x00\xffgarbage")
            if index == 15:  # a record the consumers cannot read at all: dead-lettered with where it sits
                unreadable = produce_raw(kafka, kafka.topics.listing_submitted, b"chaos-poison-unreadable",
                                         sample.listing.SerializeToString(), [(UndecodableHeaderKey("x"), b"1")])
            if index == 20:
                submit_listings(kafka, poison)
            if index == 25:  # 8 KB of zstd unfolding to 256 MiB: no consumer unfolds it past its bound
                unfolding = produce_raw(kafka, kafka.topics.listing_submitted, b"chaos-poison-unfolding",
                                        bytes(256 << 20), compression_type="zstd")
            if index == 30:
                submit_listings(kafka, [ordered[0].listing, ordered[1].listing])
        poison_ids = {"chaos-poison-garbage", *(p.listing_id for p in poison)}
        order_id = ordered[0].listing.listing_id
        outcomes.wait_for(good_ids | poison_ids | {order_id}, 300)
        result = outcomes.result("poison interleaved with good events", good_ids | poison_ids,
                                 len(good_ids) + len(poison_ids) + 2)
        reasons = {f.listing_id: f.reason for f in outcomes.failed if f.listing_id in poison_ids}
        # The records no one can read have no listing id anyone could read: their dead letters are found by where
        # they sat (the barrier in wait_for went through their partitions after them), and count as lost unless one
        # carries the bytes of the batch holding the record (all there is of it).
        batches = {}
        for name, metadata in (("chaos-poison-unreadable", unreadable), ("chaos-poison-unfolding", unfolding)):
            place = (kafka.topics.listing_submitted, metadata.partition, metadata.offset)
            letters = [f for f in outcomes.failed if (f.source_topic, f.source_partition, f.source_offset) == place]
            carrying = [f for f in letters if f.source_batch_offset <= metadata.offset and f.source_batch]
            if carrying:
                result.dead_lettered += 1
                reasons[name] = carrying[0].reason
                batches[name] = len(carrying[0].source_batch)
            else:
                result.lost += 1
                reasons[name] = letters[0].reason if letters else "no dead letter"
        digests = [e.classification.image_digest for _, e in outcomes.published
                   if e.classification.listing_id == order_id]
        from services.preprocessing.images import image_digest

        expected = [image_digest(s.listing.image_bytes) for s in ordered]
        result.notes = json.dumps({"poison_reasons": reasons, "unreadable_batch_bytes_carried": batches,
                                   "order_kept": digests[:2] == expected})
        return result
    finally:
        outcomes.close()


def model_reloaded(stack: LocalStack, count: int = 300, model: str | None = None) -> ScenarioResult:
    """A new version of a model appears in the repository Triton polls while listings flow: Triton loads it and
    unloads the old one (num_versions 1); preprocessing must follow without a restart and lose nothing.

    Half the listings go before the new version, half once Triton reports it ready, so both versions serve
    whatever the machine's speed."""
    model = model or stack.called_models[0]
    repository = stack.triton.work_dir / "model_repository" / model
    current = max(int(p.name) for p in repository.iterdir() if p.name.isdigit())
    # The second half lists the first half's photos again under new listing ids (the same seed: the same photos), so
    # the workers hold answers for them made by the version that is then unloaded.
    first = sample_listings(count // 2, seed=107, prefix="chaos-reload")
    second = sample_listings(count - count // 2, seed=107, prefix="chaos-reload-again")
    samples = first + second
    ids = {s.listing.listing_id for s in samples}
    outcomes = Outcomes(stack)
    client = stack.triton.client()
    try:
        threading.Thread(target=submit_listings, args=(stack.kafka_settings, [s.listing for s in first]),
                         daemon=True).start()
        at_fault = _inject_when(outcomes, ids, 0.2)
        new_version = repository / str(current + 1)
        new_version.mkdir()
        shutil.copy(repository / str(current) / "model.py", new_version / "model.py")
        (new_version / "model.onnx").symlink_to((repository / str(current) / "model.onnx").resolve())
        fault_at = time.time()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # Triton polls the repository every few seconds
            try:
                if client.is_model_ready(model, str(current + 1)):
                    break
            except Exception:  # noqa: BLE001  (busy loading)
                pass
            time.sleep(0.5)
        submit_listings(stack.kafka_settings, [s.listing for s in second])
        outcomes.wait_for(ids, 300)
        versions = Counter(e.classification.model_versions for _, e in outcomes.published
                           if e.classification.listing_id in ids)
        on_new = {e.classification.listing_id for _, e in outcomes.published
                  if f"{model}:{current + 1}" in e.classification.model_versions}
        result = outcomes.result(f"{model} reloaded at version {current + 1} mid-stream", ids, count,
                                 outcomes.first_published_after(fault_at, on_new),
                                 json.dumps({"model_versions": versions}))
        result.published_at_fault = at_fault
        result.notes = json.dumps({"model": model, "old": f"{model}:{current}", "new": f"{model}:{current + 1}",
                                   "model_versions": versions})
        return result
    finally:
        client.close()
        outcomes.close()


def _predictions(stack: LocalStack, count: int, prefix: str) -> list[events_pb2.PredictionMade]:
    """Prediction events as preprocessing would make them (the models' labels, a confident answer each)."""
    from services.common.fusion_file import FUSION_FILE, FusionConfig

    fusion = FusionConfig.load(stack.options.model_repository / FUSION_FILE)
    labels = list(fusion.labels)
    run = uuid.uuid4().hex[:6]
    made = []
    for index in range(count):
        probabilities = [0.02] * len(labels)
        probabilities[index % len(labels)] = 1.0 - 0.02 * (len(labels) - 1)
        marketplace, locale = MARKETPLACES[index % len(MARKETPLACES)]
        made.append(events_pb2.PredictionMade(
            submission_id=f"{prefix}-{run}-{index}", listing_id=f"{prefix}-{run}-{index:04d}", marketplace=marketplace,
            locale=locale, image_digest=f"{run}{index:04d}",
            predictions=[common_pb2.ModelPrediction(model_name=name, model_version="chaos", labels=labels,
                                                    probabilities=probabilities) for name in fusion.called_models]))
    return made


def results_replicas_racing(stack: LocalStack, count: int = 100) -> ScenarioResult:
    """Two result replicas on one PostgreSQL receive the same predictions at once: every prediction is sent to every
    partition, so both replicas hold copies and race to store and publish them. Each must come out once."""
    from kafka import KafkaProducer

    from services.common.kafka import payload_headers

    if "results-2" not in stack.services:
        stack.add_service("results-2")
    made = _predictions(stack, count, "chaos-race")
    ids = {m.listing_id for m in made}
    kafka = stack.kafka_settings
    outcomes = Outcomes(stack)
    producer = KafkaProducer(**kafka.client_options(), acks="all", linger_ms=5)
    try:
        began = time.time()
        for prediction in made:
            for partition in range(stack.options.partitions):
                producer.send(kafka.topics.prediction_made, key=prediction.listing_id.encode(), partition=partition,
                              value=prediction.SerializeToString(), headers=payload_headers(prediction))
        producer.flush()
        outcomes.wait_for(ids, 300)
        return outcomes.result("two result replicas racing over the same predictions (PostgreSQL)", ids,
                               count * stack.options.partitions, outcomes.first_published_after(began, ids),
                               f"each prediction sent to all {stack.options.partitions} partitions")
    finally:
        producer.close()
        outcomes.close()
        replica = stack.services.pop("results-2", None)
        if replica:
            replica.stop()


def results_killed_mid_publishing(stack: LocalStack, count: int = 200) -> ScenarioResult:
    """SIGKILL, not SIGTERM: the result service dies wherever it is, publishing included. Nothing may be lost; an
    event republished after the kill carries the same event id (the documented crash window)."""
    samples = sample_listings(count, seed=109, prefix="chaos-kill-results", photos_new_to_the_stack=True)
    ids = {s.listing.listing_id for s in samples}
    outcomes = Outcomes(stack)

    def kill_and_restart() -> None:
        stack.services["results"].process.signal(signal.SIGKILL)
        stack.services["results"].process.process.wait(10)
        stack.services["results"].start()

    try:
        at_fault, fault_at = _fault_mid_stream(stack, outcomes, samples, kill_and_restart)
        result = outcomes.result("result service SIGKILLed mid-publishing", ids, count,
                                 outcomes.first_published_after(fault_at, ids),
                                 "republished event ids are counted in duplicated_in_crash_window", crash_window=True)
        result.published_at_fault = at_fault
        return result
    finally:
        outcomes.close()


POISON_IDS = ("chaos-poison-nul\x00id", "chaos-poison-" + "x" * 300)


def poison_ids_interleaved(stack: LocalStack, good_count: int = 40) -> ScenarioResult:
    """Ids no store can hold (a NUL byte, 300 characters) among good events, on the input topic and straight onto
    the prediction topic: dead-lettered where they enter, and the good events of the same partitions go on."""
    samples = sample_listings(good_count, seed=113, prefix="chaos-poison-ids")
    good_ids = {s.listing.listing_id for s in samples}
    kafka = stack.kafka_settings
    outcomes = Outcomes(stack)
    poison_listings = [common_pb2.Listing(listing_id=i, marketplace="de-modehaus", image_bytes=samples[0].listing.image_bytes)
                       for i in POISON_IDS]
    poison_predictions = _predictions(stack, 2, "chaos-poison-prediction")
    for prediction, bad_id in zip(poison_predictions, POISON_IDS):
        prediction.listing_id = bad_id + "-prediction"
    poison_all = {*POISON_IDS, *(p.listing_id for p in poison_predictions)}
    try:
        began = time.time()
        for index, sample in enumerate(samples):
            submit_listings(kafka, [sample.listing])
            if index == 10:
                submit_listings(kafka, poison_listings)
            if index == 20:
                for prediction in poison_predictions:
                    produce_raw(kafka, kafka.topics.prediction_made, b"chaos-poison", prediction.SerializeToString())
        outcomes.wait_for(good_ids | poison_all, 300)
        result = outcomes.result("poison ids among good events", good_ids | poison_all, len(good_ids) + len(poison_all),
                                 outcomes.first_published_after(began, good_ids))
        result.notes = json.dumps({f.listing_id[:40]: f.reason for f in outcomes.failed if f.listing_id in poison_all})
        return result
    finally:
        outcomes.close()


class ImageHost:
    """An image host on this machine for the URL scenarios: /photo/<category>/<file> serves a validation photo,
    /flaky-429/... and /flaky-503/... fail once per path before serving it, /missing is 404, and /drip/... sends one
    byte every 0.3 s (never idle long enough for a per-read timeout)."""

    def __init__(self):
        self.port = free_port()
        self._server = None
        self.failed_once: set[str] = set()

    @property
    def allowed(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def start(self) -> None:
        import http.server

        from services.trainer.real_models import clothing_dataset

        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                kind, _, rest = self.path.split("?")[0].lstrip("/").partition("/")
                if kind.startswith("flaky-") and self.path not in host.failed_once:
                    host.failed_once.add(self.path)
                    self.send_response(int(kind.split("-")[1]))
                    self.end_headers()
                    return
                if kind == "drip":
                    self.send_response(200)
                    self.end_headers()
                    for _ in range(1000):
                        try:
                            self.wfile.write(b"\xff")
                            self.wfile.flush()
                        except OSError:
                            return
                        time.sleep(0.3)
                    return
                photo = clothing_dataset() / "validation" / rest
                if kind not in ("photo", "flaky-429", "flaky-503") or ".." in rest or not photo.is_file():
                    self.send_response(404)
                    self.end_headers()
                    return
                data = photo.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        if self._server is None:
            self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
            self._server.daemon_threads = True
            threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def dripping_host_among_good(stack: LocalStack, host: ImageHost, good_count: int = 40,
                             slow_count: int = 3) -> ScenarioResult:
    """Listings whose image URL drips, in the same batches as good ones: the slow ones fail as SOURCE_TOO_SLOW at
    the fetch's total deadline, the good ones are classified."""
    host.start()
    samples = sample_listings(good_count, seed=127, prefix="chaos-drip-good")
    run = uuid.uuid4().hex[:6]
    slow = [common_pb2.Listing(listing_id=f"chaos-drip-slow-{run}-{i}", marketplace="de-modehaus",
                               image_url=host.url(f"drip/slow-{i}.jpg")) for i in range(slow_count)]
    listings = [s.listing for s in samples]
    for index, listing in enumerate(slow):
        listings.insert(5 + index * 10, listing)
    ids = {listing.listing_id for listing in listings}
    outcomes = Outcomes(stack)
    try:
        began = time.time()
        submit_listings(stack.kafka_settings, listings)
        outcomes.wait_for(ids, 300)
        result = outcomes.result("a dripping image host among good listings", ids, len(ids),
                                 outcomes.first_published_after(began, ids))
        result.notes = json.dumps({f.listing_id: common_pb2.ErrorKind.Name(f.error_kind)
                                   for f in outcomes.failed if f.listing_id in ids})
        return result
    finally:
        outcomes.close()
        host.stop()


def postgres_connections_killed(stack: LocalStack, count: int = 200) -> ScenarioResult:
    """Every connection to the result store's PostgreSQL database is terminated mid-stream (what a database restart
    or failover does to clients): the result service reconnects, retries the batch, loses and doubles nothing."""
    import psycopg

    if not stack.database_url.startswith("postgresql"):
        return ScenarioResult("PostgreSQL connections killed (skipped: the store is SQLite)", 0, 0, 0, 0, 0)
    samples = sample_listings(count, seed=131, prefix="chaos-pg-killed", photos_new_to_the_stack=True)
    ids = {s.listing.listing_id for s in samples}
    outcomes = Outcomes(stack)
    killed = []

    def kill_connections() -> None:
        with psycopg.connect(stack.database_url, autocommit=True) as admin:
            rows = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                                 "current_database() AND pid <> pg_backend_pid()").fetchall()
            killed.append(len(rows))

    try:
        at_fault, fault_at = _fault_mid_stream(stack, outcomes, samples, kill_connections)
        result = outcomes.result("PostgreSQL connections killed mid-stream", ids, count,
                                 outcomes.first_published_after(fault_at, ids),
                                 f"{killed[0] if killed else 0} connections terminated")
        result.published_at_fault = at_fault
        return result
    finally:
        outcomes.close()


class HealthWatch:
    """Samples a service's gRPC health every 0.1 s in a thread, so a scenario can say what it reported during a
    fault (NOT_SERVING while a dependency is gone, SERVING again after)."""

    def __init__(self, stack: LocalStack, service: str):
        from services.localstack.stack import grpc_serving

        self._serving = lambda: grpc_serving(stack.services[service].address, stack.client_tls("localstack"))
        self.samples: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                serving = self._serving()
            except Exception:  # noqa: BLE001  (not answering counts as not serving)
                serving = False
            self.samples.append((time.time(), serving))
            self._stop.wait(0.1)

    def __enter__(self) -> "HealthWatch":
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def not_serving_between(self, began: float, ended: float) -> bool:
        return any(not serving for at, serving in self.samples if began <= at <= ended)

    def serving_after(self, moment: float) -> bool:
        return any(serving for at, serving in self.samples if at > moment)


def postgres_unavailable(stack: LocalStack, count: int = 200, outage_s: float = 6.0) -> ScenarioResult:
    """The result store's database refuses every connection for outage_s mid-stream (a database down, not only its
    connections cut): the result service must say NOT_SERVING, pause and retry with backoff, dead-letter nothing,
    answer GetClassification with UNAVAILABLE meanwhile, and resume by itself once the database is back."""
    import psycopg

    from services.common.contracts.product_classification.v1 import results_pb2, results_pb2_grpc

    if not stack.database_url.startswith("postgresql"):
        return ScenarioResult("PostgreSQL unavailable (skipped: the store is SQLite)", 0, 0, 0, 0, 0)
    samples = sample_listings(count, seed=137, prefix="chaos-pg-down", photos_new_to_the_stack=True)
    ids = {s.listing.listing_id for s in samples}
    base, _, database = stack.database_url.rpartition("/")
    admin_url = f"{base}/postgres"
    outcomes = Outcomes(stack)
    seen: dict = {}

    def take_the_database_away() -> None:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))
        down_at = time.time()
        try:
            with stack.internal_channel("results") as channel:  # the read path meanwhile
                results = results_pb2_grpc.ClassificationResultsStub(channel)
                while time.time() < down_at + outage_s:
                    try:
                        results.GetClassification(results_pb2.GetClassificationRequest(
                            listing_id=samples[0].listing.listing_id), timeout=5)
                        seen.setdefault("get_classification", "OK")
                    except grpc.RpcError as error:
                        seen["get_classification"] = error.code().name
                    time.sleep(0.5)
        finally:
            with psycopg.connect(admin_url, autocommit=True) as admin:
                admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        seen["window"] = (down_at, time.time())

    try:
        with HealthWatch(stack, "results") as watch:
            at_fault, _ = _fault_mid_stream(stack, outcomes, samples, take_the_database_away)
            back_at = seen["window"][1]
            seen["not_serving_during_outage"] = watch.not_serving_between(*seen["window"])
            deadline = time.monotonic() + 30
            while not watch.serving_after(back_at) and time.monotonic() < deadline:
                time.sleep(0.1)
            seen["serving_again"] = watch.serving_after(back_at)
        result = outcomes.result(f"PostgreSQL refusing connections for {outage_s:.0f} s mid-stream", ids, count,
                                 outcomes.first_published_after(back_at, ids))
        result.published_at_fault = at_fault
        result.notes = json.dumps({k: v for k, v in seen.items() if k != "window"})
        return result
    finally:
        outcomes.close()


def broker_unreachable(stack: LocalStack, count: int = 200, outage_s: float = 8.0) -> ScenarioResult:
    """The network to the broker goes away for outage_s mid-stream (every connection closed, new ones refused; the
    broker keeps its records), longer than the group's session timeout: sends and commits fail, the services say
    NOT_SERVING, retry the batch in hand and resume by themselves; nothing lost, doubled or dead-lettered."""
    link = stack.broker.link
    if link is None:
        return ScenarioResult("broker unreachable (skipped: the stack has no broker link)", 0, 0, 0, 0, 0)
    samples = sample_listings(count, seed=139, prefix="chaos-broker-down", photos_new_to_the_stack=True)
    ids = {s.listing.listing_id for s in samples}
    outcomes = Outcomes(stack)
    window: list[float] = []

    def cut_and_restore() -> None:
        window.append(time.time())
        link.cut()
        time.sleep(outage_s)
        link.restore()
        window.append(time.time())

    try:
        with HealthWatch(stack, "preprocessing") as preprocessing, HealthWatch(stack, "results") as results:
            at_fault, _ = _fault_mid_stream(stack, outcomes, samples, cut_and_restore)
            seen = {"not_serving_during_outage": {
                name: watch.not_serving_between(window[0], window[1] + 5)
                for name, watch in (("preprocessing", preprocessing), ("results", results))}}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (preprocessing.serving_after(window[1])
                                                       and results.serving_after(window[1])):
                time.sleep(0.1)
            seen["serving_again"] = preprocessing.serving_after(window[1]) and results.serving_after(window[1])
        result = outcomes.result(f"broker unreachable for {outage_s:.0f} s mid-stream", ids, count,
                                 outcomes.first_published_after(window[1], ids))
        result.published_at_fault = at_fault
        result.notes = json.dumps(seen)
        return result
    finally:
        outcomes.close()


def chaos_stack_options(work_dir, database_url: str | None) -> tuple[StackOptions, ImageHost]:
    """The stack the scenarios need: the local image host allowed past the SSRF guard, a short fetch deadline."""
    host = ImageHost()
    return StackOptions(work_dir=work_dir, database_url=database_url, broker_link=True, extra_env={
        "PREPROCESSING_FETCH_ALLOWED_HOSTS": host.allowed, "PREPROCESSING_FETCH_TOTAL_TIMEOUT_S": "3",
        "PREPROCESSING_FETCH_TIMEOUT_S": "2"}), host


SCENARIOS = (triton_killed_and_restarted, worker_killed, short_worker_killed, results_restarted, produced_twice, poison_interleaved,
             model_reloaded, results_replicas_racing, results_killed_mid_publishing, poison_ids_interleaved,
             dripping_host_among_good, postgres_connections_killed, postgres_unavailable,
             broker_unreachable)


def _fresh_postgres() -> tuple[str | None, callable]:
    """A database of its own on the machine's PostgreSQL (TEST_POSTGRES_ADMIN_URL), or None when none answers."""
    import os

    import psycopg

    admin_url = os.environ.get("TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
    name = f"product_classification_chaos_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except Exception:  # noqa: BLE001
        return None, lambda: None

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"{admin_url.rpartition('/')[0]}/{name}", drop


def main() -> None:
    work_dir = REPOSITORY_ROOT / ".run" / "chaos"
    shutil.rmtree(work_dir, ignore_errors=True)
    database_url, drop = _fresh_postgres()
    print(f"result store: {'PostgreSQL ' + database_url if database_url else 'SQLite (no PostgreSQL answered)'}",
          flush=True)
    options, host = chaos_stack_options(work_dir, database_url)
    results = []
    try:
        with LocalStack(options) as stack:
            for scenario in SCENARIOS:
                began = time.monotonic()
                result = scenario(stack, host) if scenario is dripping_host_among_good else scenario(stack)
                results.append(result)
                print(f"{result.scenario}: in {result.events_in}, classified {result.classified}, dead-lettered "
                      f"{result.dead_lettered}, duplicated {result.duplicated} (+{result.duplicated_in_crash_window} "
                      f"in the crash window), lost {result.lost}, recovery {result.recovery_s} s "
                      f"({time.monotonic() - began:.0f} s)", flush=True)
    finally:
        drop()
    print(json.dumps({"scenarios": [asdict(r) for r in results], "lost": sum(r.lost for r in results),
                      "duplicated": sum(r.duplicated for r in results),
                      "duplicated_in_crash_window": sum(r.duplicated_in_crash_window for r in results)}))


if __name__ == "__main__":
    main()
