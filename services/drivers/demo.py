"""`make demo`: starts the local stack, streams real validation photos through Kafka and shows what came back."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time

from services.common.contracts.product_classification.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.localstack.stack import REPOSITORY_ROOT, LocalStack, StackOptions
from services.drivers.traffic import AllClassified, TopicReader, classified_by_listing, sample_listings, submit_listings


def describe(c: common_pb2.Classification, true_label: str = "", photo: str = "") -> str:
    """A few lines for one classification: status, category in its locale, Google category, customs codes."""
    status = common_pb2.ClassificationStatus.Name(c.status).removeprefix("CLASSIFICATION_STATUS_")
    mark = "" if not true_label else ("  right" if c.label == true_label else f"  WRONG (true: {true_label})")
    headings = sorted({code.heading for code in c.category.customs_codes})
    lines = [f"{c.listing_id}  {c.marketplace}  {photo}  {status} {c.confidence:.3f}{mark}",
             f"  {c.category.id}  {' > '.join(c.category.path)}  [{c.category.locale}]",
             f"  Google {c.category.google_category.id} {c.category.google_category.name}",
             f"  HS {', '.join(headings)} ({len(c.category.customs_codes)} subheadings; e.g. "
             + "; ".join(f"{code.code} {dict(code.depends_on)}" for code in c.category.customs_codes[:1]) + ")"]
    if c.status == common_pb2.CLASSIFICATION_STATUS_NEEDS_REVIEW:
        lines.append("  candidates: " + ", ".join(f"{k.label} {k.confidence:.2f}" for k in c.candidates))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listings", type=int, default=40)
    parser.add_argument("--database-url", help="postgresql://... instead of the embedded SQLite store")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for every classification")
    options = parser.parse_args()

    work_dir = REPOSITORY_ROOT / ".run" / "demo"
    shutil.rmtree(work_dir, ignore_errors=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # Ctrl-C raises KeyboardInterrupt; both stop the stack
    stack = LocalStack(StackOptions(work_dir=work_dir, database_url=options.database_url))
    print(f"starting the local stack (tansu broker, Triton on CPU, {('PostgreSQL' if options.database_url else 'SQLite')}"
          f" store, gateway, preprocessing, results); logs in {work_dir}", flush=True)
    started = time.monotonic()
    try:
        stack.start()
        print(f"ready in {time.monotonic() - started:.1f} s: gateway {stack.services['gateway'].address}, "
              f"results {stack.services['results'].address}, Kafka {stack.broker.bootstrap_servers}, "
              f"Triton {stack.triton.grpc_url} ({', '.join(stack.triton.model_names)})", flush=True)
        listings = sample_listings(options.listings, prefix="demo")
        wanted = {s.listing.listing_id for s in listings}
        reader = TopicReader(stack.kafka_settings, stack.kafka_settings.topics.listing_classified)
        sent_at = time.monotonic()
        submit_listings(stack.kafka_settings, [s.listing for s in listings])
        print(f"submitted {len(listings)} listings with real validation photos (never seen in training) to "
              f"{stack.kafka_settings.topics.listing_submitted}", flush=True)
        records = reader.read(AllClassified(wanted), options.timeout)
        elapsed = time.monotonic() - sent_at
        reader.close()
        found = classified_by_listing(records)
        correct = needs_review = 0
        for sample in listings:
            events = found.get(sample.listing.listing_id)
            print()
            if not events:
                print(f"{sample.listing.listing_id}  {sample.listing.marketplace}  true {sample.true_label}: "
                      "NOT CLASSIFIED")
                continue
            c = events[0].classification
            correct += c.label == sample.true_label
            needs_review += c.status == common_pb2.CLASSIFICATION_STATUS_NEEDS_REVIEW
            print(describe(c, sample.true_label, sample.path.name if sample.path else ""))

        with stack.gateway_channel() as channel:
            sync_listing = listings[0].listing
            reply = gateway_pb2_grpc.ListingClassifierStub(channel).ClassifyListing(
                gateway_pb2.ClassifyListingRequest(listing=sync_listing), timeout=30)
            print(f"\nsynchronous gRPC ClassifyListing({sync_listing.listing_id}) -> {reply.category.id} "
                  f"{reply.category.name} ({reply.category.locale}, {reply.confidence:.3f}, "
                  f"{common_pb2.ClassificationStatus.Name(reply.status)})")

        classified = sum(1 for s in listings if s.listing.listing_id in found)
        print(f"\nKafka in to classification published: {elapsed:.1f} s for {len(listings)} listings "
              f"({len(listings) / elapsed:.2f} listings/s on this machine)")
        print(f"models: {' + '.join(stack.triton.model_names)} from triton_models/ (`make models`: trained on the "
              "clothing photos' train split; fusion fitted on the validation split)")
        print(f"needing review: {needs_review}/{classified}")
        print(f"validation accuracy: {correct / max(1, classified):.2f} (fused, {classified} real photos)")
        print(f"classified {classified}/{len(listings)} listings")
        return 0 if classified == len(listings) else 1
    except KeyboardInterrupt:
        print("interrupted; stopping the stack")
        return 130
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
