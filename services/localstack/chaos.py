"""`make chaos`: fault injection against the local stack, counting every event in and out.

Each scenario returns: events in, classified (distinct listings published), dead-lettered, duplicated (a listing
published or stored more than once), lost (neither classified nor dead-lettered), and the seconds to recover
(from the fault to the next classification published). Prints one line of JSON last.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass

from google.protobuf.message import DecodeError

from services.common.contracts.product_classification.v1 import common_pb2, events_pb2
from services.localstack.stack import REPOSITORY_ROOT, LocalStack, StackOptions
from services.localstack.traffic import TopicReader, produce_raw, sample_listings, submit_listings, submitted_event
from services.results.store import ClassificationStore


@dataclass
class ScenarioResult:
    scenario: str
    events_in: int
    classified: int
    dead_lettered: int
    duplicated: int
    lost: int
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
            self.published.append((time.monotonic(), events_pb2.ListingClassified.FromString(record.value)))
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
        self.poll()  # a moment more, so a duplicate right behind would be counted

    def first_published_after(self, moment: float, ids: set[str]) -> float | None:
        times = [t for t, e in self.published if t > moment and e.classification.listing_id in ids]
        return min(times) - moment if times else None

    def result(self, scenario: str, ids: set[str], events_in: int, recovery_s=None, notes="") -> ScenarioResult:
        published = Counter(e.classification.listing_id for _, e in self.published
                            if e.classification.listing_id in ids)
        dead = {f.listing_id for f in self.failed if f.listing_id in ids}
        store = ClassificationStore(self.stack.database_url)
        store.start()
        try:
            stored_twice = {i for i in published if store.count_for_listing(i) > 1}
        finally:
            store.stop()
        duplicated = {i for i, n in published.items() if n > 1} | stored_twice
        lost = ids - set(published) - dead
        return ScenarioResult(scenario=scenario, events_in=events_in, classified=len(published),
                              dead_lettered=len(dead), duplicated=len(duplicated), lost=len(lost),
                              recovery_s=None if recovery_s is None else round(recovery_s, 2), notes=notes)

    def close(self) -> None:
        self.classified_reader.close()
        self.failed_reader.close()


def _inject_when(outcomes: Outcomes, ids: set[str], fraction: float, timeout_s: float = 120) -> int:
    """Waits until the given fraction of the listings is published, so the fault lands mid-stream; returns how
    many were published by then."""
    deadline = time.monotonic() + timeout_s
    published = 0
    while time.monotonic() < deadline:
        outcomes.poll()
        published = len({e.classification.listing_id for _, e in outcomes.published
                         if e.classification.listing_id in ids})
        if published >= fraction * len(ids):
            break
    return published


def _fault_mid_stream(stack: LocalStack, outcomes: Outcomes, samples, fault) -> tuple[int, float]:
    """Streams the listings, runs fault() once a fifth of them is published, then waits for all of them.
    Returns how many were published when the fault hit, and when it hit (time.monotonic())."""
    ids = {s.listing.listing_id for s in samples}
    threading.Thread(target=submit_listings, args=(stack.kafka_settings, [s.listing for s in samples]),
                     daemon=True).start()
    at_fault = _inject_when(outcomes, ids, 0.2)
    fault_at = time.monotonic()
    fault()
    outcomes.wait_for(ids, 300)
    return at_fault, fault_at


def triton_killed_and_restarted(stack: LocalStack, count: int = 300) -> ScenarioResult:
    samples = sample_listings(count, seed=61, prefix="chaos-triton")
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
    samples = sample_listings(count, seed=67, prefix="chaos-worker")
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


def results_restarted(stack: LocalStack, count: int = 200) -> ScenarioResult:
    samples = sample_listings(count, seed=71, prefix="chaos-results")
    ids = {s.listing.listing_id for s in samples}
    outcomes = Outcomes(stack)

    def restart() -> None:
        stack.services["results"].stop()  # SIGTERM: drains, commits, exits
        stack.services["results"].start()

    try:
        at_fault, fault_at = _fault_mid_stream(stack, outcomes, samples, restart)
        result = outcomes.result("result service restarted mid-stream (SIGTERM)", ids, count,
                                 outcomes.first_published_after(fault_at, ids))
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
    from services.localstack.poison import corrupt_image_listing, oversized_image_listing

    samples = sample_listings(good_count, seed=79, prefix="chaos-poison")
    good_ids = {s.listing.listing_id for s in samples}
    poison = [corrupt_image_listing("chaos-poison-corrupt"), oversized_image_listing("chaos-poison-bomb")]
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
            if index == 20:
                submit_listings(kafka, poison)
            if index == 30:
                submit_listings(kafka, [ordered[0].listing, ordered[1].listing])
        poison_ids = {"chaos-poison-garbage", *(p.listing_id for p in poison)}
        order_id = ordered[0].listing.listing_id
        outcomes.wait_for(good_ids | poison_ids | {order_id}, 300)
        result = outcomes.result("poison interleaved with good events", good_ids | poison_ids, len(good_ids) + 3)
        reasons = {f.listing_id: f.reason for f in outcomes.failed if f.listing_id in poison_ids}
        digests = [e.classification.image_digest for _, e in outcomes.published
                   if e.classification.listing_id == order_id]
        from services.preprocessing.images import image_digest

        expected = [image_digest(s.listing.image_bytes) for s in ordered]
        result.notes = json.dumps({"poison_reasons": reasons, "order_kept": digests[:2] == expected})
        return result
    finally:
        outcomes.close()


def model_reloaded(stack: LocalStack, count: int = 300, model: str | None = None) -> ScenarioResult:
    """A new version of a model appears in the repository Triton polls while listings flow: Triton loads it and
    unloads the old one (num_versions 1); preprocessing must follow without a restart and lose nothing.

    Half the listings go before the new version, half once Triton reports it ready, so both versions serve
    whatever the machine's speed."""
    import tritonclient.grpc as triton_grpc

    model = model or stack.called_models[0]
    repository = stack.triton.work_dir / "model_repository" / model
    current = max(int(p.name) for p in repository.iterdir() if p.name.isdigit())
    samples = sample_listings(count, seed=107, prefix="chaos-reload")
    ids = {s.listing.listing_id for s in samples}
    first, second = samples[:count // 2], samples[count // 2:]
    outcomes = Outcomes(stack)
    client = triton_grpc.InferenceServerClient(stack.triton.grpc_url)
    try:
        threading.Thread(target=submit_listings, args=(stack.kafka_settings, [s.listing for s in first]),
                         daemon=True).start()
        at_fault = _inject_when(outcomes, ids, 0.2)
        new_version = repository / str(current + 1)
        new_version.mkdir()
        shutil.copy(repository / str(current) / "model.py", new_version / "model.py")
        (new_version / "model.onnx").symlink_to((repository / str(current) / "model.onnx").resolve())
        fault_at = time.monotonic()
        deadline = fault_at + 120
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


SCENARIOS = (triton_killed_and_restarted, worker_killed, results_restarted, produced_twice, poison_interleaved,
             model_reloaded)


def main() -> None:
    work_dir = REPOSITORY_ROOT / ".run" / "chaos"
    shutil.rmtree(work_dir, ignore_errors=True)
    results = []
    with LocalStack(StackOptions(work_dir=work_dir)) as stack:
        for scenario in SCENARIOS:
            began = time.monotonic()
            result = scenario(stack)
            results.append(result)
            print(f"{result.scenario}: in {result.events_in}, classified {result.classified}, dead-lettered "
                  f"{result.dead_lettered}, duplicated {result.duplicated}, lost {result.lost}, recovery "
                  f"{result.recovery_s} s ({time.monotonic() - began:.0f} s)", flush=True)
    print(json.dumps({"scenarios": [asdict(r) for r in results], "lost": sum(r.lost for r in results),
                      "duplicated": sum(r.duplicated for r in results)}))


if __name__ == "__main__":
    main()
