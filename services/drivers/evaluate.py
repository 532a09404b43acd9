"""`make evaluate [DATA=folder]`: what a marketplace gets for real photos, measured through the whole system.

Starts the local stack, sends every photo of a folder-per-category set as a listing event on Kafka, waits for each
to come out classified (or dead-lettered), and scores what came out: per-category precision and recall, fused top-1
and top-5, and each model's own top-1 on the same photos through the same Triton. Folder names are labels; a folder
the models do not know stops the run before anything is sent; a photo that cannot be classified counts as failed
(and wrong), never dropped. Prints a table, writes a confusion matrix PNG, and prints one line of JSON last.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.contracts.product_classification.v1 import common_pb2, events_pb2
from services.common.fusion_file import FusionConfig
from services.localstack.stack import REPOSITORY_ROOT, LocalStack, StackOptions
from services.drivers.traffic import MARKETPLACES, TopicReader, labelled_photos, submit_listings


class EvaluationError(ValueError):
    """The data cannot be evaluated (unknown folder, no photos); nothing was sent."""


@dataclass(frozen=True)
class Outcome:
    """What came back for one photo: the fused ranking (best first), or the failure's reason."""

    ranking: tuple[str, ...] = ()
    failure: str = ""


def check_folders(photos: list[tuple[Path, str]], known_labels: list[str]) -> None:
    unknown = sorted({label for _, label in photos} - set(known_labels))
    if unknown:
        raise EvaluationError(f"folders that are no label of the models: {', '.join(unknown)} (the models know "
                              f"{', '.join(known_labels)})")
    if not photos:
        raise EvaluationError("no photos to evaluate")


def score(expected: dict[str, str], outcomes: dict[str, Outcome], labels: list[str]) -> dict:
    """Pure: expected label per listing and what came back -> the figures. A listing with no outcome or a failure
    counts as failed and wrong; it is never left out."""
    index = {label: i for i, label in enumerate(labels)}
    failed = [listing for listing in expected if listing not in outcomes or outcomes[listing].failure]
    confusion = np.zeros((len(labels), len(labels) + 1), int)  # last column: failed
    top1 = top5 = 0
    for listing, truth in expected.items():
        outcome = outcomes.get(listing, Outcome(failure="no answer"))
        if outcome.failure or not outcome.ranking:
            confusion[index[truth], -1] += 1
            continue
        confusion[index[truth], index[outcome.ranking[0]]] += 1
        top1 += outcome.ranking[0] == truth
        top5 += truth in outcome.ranking[:5]
    per_category = {}
    for label, i in index.items():
        predicted = confusion[:, i].sum()
        actual = confusion[i].sum()
        per_category[label] = {"precision": float(confusion[i, i] / predicted) if predicted else 0.0,
                               "recall": float(confusion[i, i] / actual) if actual else 0.0, "support": int(actual)}
    count = max(1, len(expected))
    return {"images": len(expected), "failed": len(failed), "fused_top1": top1 / count, "fused_top5": top5 / count,
            "per_category": per_category, "confusion_matrix": confusion.tolist(), "failed_listings": failed[:20]}


def per_model_top1(stack: LocalStack, photos: list[tuple[Path, str]], decode_in_triton: bool = False
                   ) -> dict[str, float]:
    """Each served model alone, on the same photos, prepared by the same code (or, on the GPU decode path, decoded by
    the same ensemble), through the same Triton."""
    from services.common.decode_path import ENSEMBLE_MODEL
    from services.common.errors import ClassificationError
    from services.preprocessing.images import ImageLimits, prepare_encoded, prepare_image

    classifier = stack.triton.classifier(stack.called_models if decode_in_triton else stack.triton.model_names,
                                         parallel=False, ensemble=ENSEMBLE_MODEL if decode_in_triton else None)
    classifier.start()
    try:
        specs = classifier.specs
        sizes = sorted({s.input_size for s in specs})
        correct = {s.name: 0 for s in specs}
        for start in range(0, len(photos), 32):
            chunk = photos[start:start + 32]
            tensors: dict[int, list] = {size: [] for size in sizes}
            truths, encoded = [], []
            for path, label in chunk:
                try:
                    if decode_in_triton:
                        encoded.append(prepare_encoded(path.read_bytes(), ImageLimits()).encoded)
                    else:
                        prepared = prepare_image(path.read_bytes(), sizes, ImageLimits())
                        for size in sizes:
                            tensors[size].append(prepared.tensors[size])
                except (ClassificationError, OSError):
                    continue  # unreadable: wrong for every model (the denominator stays every photo)
                truths.append(label)
            if not truths:
                continue
            if decode_in_triton:
                outputs, refused = classifier.classify_photos(encoded)
                truths = [t for i, t in enumerate(truths) if i not in refused]
            else:
                outputs = classifier.classify({size: np.stack(t) for size, t in tensors.items()})
            for spec in specs:
                predicted = [spec.labels[i] for i in outputs[spec.name].argmax(axis=1)]
                correct[spec.name] += sum(p == t for p, t in zip(predicted, truths))
        return {name: hits / max(1, len(photos)) for name, hits in correct.items()}
    finally:
        classifier.stop()


def collect(stack: LocalStack, listings: list[common_pb2.Listing], timeout_s: float) -> dict[str, Outcome]:
    """Submits through Kafka; reads listing-classified and processing-failed until every listing has an answer."""
    wanted = {listing.listing_id for listing in listings}
    topics = stack.kafka_settings.topics
    classified = TopicReader(stack.kafka_settings, topics.listing_classified)
    failed = TopicReader(stack.kafka_settings, topics.processing_failed)
    outcomes: dict[str, Outcome] = {}
    try:
        submit_listings(stack.kafka_settings, listings)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not wanted <= set(outcomes):
            for record in classified.read(lambda rs: bool(rs), 0.5):
                c = events_pb2.ListingClassified.FromString(record.value).classification
                if c.listing_id in wanted:
                    outcomes[c.listing_id] = Outcome(tuple(k.label for k in c.candidates))
            for record in failed.read(lambda rs: bool(rs), 0.2):
                f = events_pb2.ProcessingFailed.FromString(record.value)
                if f.listing_id in wanted and f.listing_id not in outcomes:
                    outcomes[f.listing_id] = Outcome(failure=f"{common_pb2.ErrorKind.Name(f.error_kind)}: {f.reason}")
    finally:
        classified.close()
        failed.close()
    return outcomes


def plot(confusion: list[list[int]], labels: list[str], path: Path) -> None:
    from services.trainer.evaluation import plot_confusion

    plot_confusion([row[:-1] for row in confusion], labels, "fused, through the pipeline", path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=None, help="folder per category (default: validation photos)")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=REPOSITORY_ROOT / ".run" / "evaluate")
    parser.add_argument("--decode-in-triton", action="store_true", help="the GPU decode path: photos' bytes to "
                        "Triton's photo_ensemble (here, its DALI pipeline on the CPU) instead of decoding in "
                        "preprocessing")
    parser.add_argument("--triton-shared-memory", action="store_true", help="the batches to Triton through system "
                        "shared memory (PREPROCESSING_TRITON_SHARED_MEMORY) instead of gRPC messages")
    options = parser.parse_args()
    repository = REPOSITORY_ROOT / "triton_models"
    try:
        fusion = FusionConfig.load(repository / "fusion.json")
        labels = list(fusion.labels or ())
        photos = labelled_photos(options.data)
        check_folders(photos, labels)
    except (EvaluationError, ValueError, FileNotFoundError) as error:
        print(f"cannot evaluate: {error}", file=sys.stderr)
        return 2
    shutil.rmtree(options.out, ignore_errors=True)
    options.out.mkdir(parents=True)
    run = uuid.uuid4().hex[:6]
    listings, expected = [], {}
    for index, (path, label) in enumerate(photos):
        marketplace, locale = MARKETPLACES[index % len(MARKETPLACES)]
        listing = common_pb2.Listing(listing_id=f"eval-{run}-{index:05d}", marketplace=marketplace, locale=locale,
                                     image_bytes=path.read_bytes())
        listings.append(listing)
        expected[listing.listing_id] = label
    extra_env = {"RESULTS_CANDIDATE_COUNT": "5"}
    if options.decode_in_triton:
        extra_env["PREPROCESSING_DECODE_IN_TRITON"] = "true"
    if options.triton_shared_memory:
        extra_env["PREPROCESSING_TRITON_SHARED_MEMORY"] = "true"
    stack = LocalStack(StackOptions(work_dir=options.out / "stack", extra_env=extra_env))
    print(f"evaluating {len(photos)} photos of {options.data or 'the validation split'} through the local stack",
          flush=True)
    try:
        stack.start()
        began = time.monotonic()
        outcomes = collect(stack, listings, options.timeout)
        elapsed = time.monotonic() - began
        models = per_model_top1(stack, photos, options.decode_in_triton)
    finally:
        stack.stop()
    figures = score(expected, outcomes, labels)
    plot(figures["confusion_matrix"], labels, options.out / "confusion_matrix.png")
    print(f"\n{'category':<12} {'precision':>9} {'recall':>7} {'photos':>7}")
    for label, row in figures["per_category"].items():
        print(f"{label:<12} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['support']:>7}")
    print(f"\n{'model':<20} {'top-1':>6}   (same photos, same Triton; weight in the fusion)")
    for name, value in models.items():
        print(f"{name:<20} {value:>6.3f}   {fusion.weights.get(name, 0.0):.3f}")
    print(f"{'fused (pipeline)':<20} {figures['fused_top1']:>6.3f}   top-5 {figures['fused_top5']:.3f}; "
          f"{figures['failed']} failed")
    print(f"confusion matrix: {options.out / 'confusion_matrix.png'}")
    print(json.dumps({"images": figures["images"], "failed": figures["failed"],
                      "fused_top1": round(figures["fused_top1"], 4), "fused_top5": round(figures["fused_top5"], 4),
                      "per_model_top1": {k: round(v, 4) for k, v in models.items()},
                      "per_category_recall": {k: round(v["recall"], 4) for k, v in figures["per_category"].items()},
                      "listings_per_s": round(len(listings) / elapsed, 2),
                      "triton_transport": "shared memory" if options.triton_shared_memory else "grpc",
                      "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs, CPU Triton"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
