"""`make demo`: starts the local stack, streams sample listings through Kafka and shows what came back."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from pathlib import Path

import grpc

from services.common.contracts.product_classification.v1 import gateway_pb2, gateway_pb2_grpc
from services.localstack.stack import REPOSITORY_ROOT, LocalStack, StackOptions
from services.localstack.traffic import TopicReader, classified_by_listing, sample_listings, submit_listings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listings", type=int, default=24)
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
        print(f"submitted {len(listings)} SYNTHETIC sample listings to {stack.kafka_settings.topics.listing_submitted}",
              flush=True)
        records = reader.read(lambda rs: wanted <= set(classified_by_listing(rs)), options.timeout)
        elapsed = time.monotonic() - sent_at
        reader.close()
        found = classified_by_listing(records)
        print(f"\n{'listing':<22} {'marketplace':<11} {'true':<11} {'category (locale)':<42} {'confidence':>10}")
        correct = 0
        for sample in listings:
            events = found.get(sample.listing.listing_id)
            if not events:
                print(f"{sample.listing.listing_id:<22} {sample.listing.marketplace:<11} {sample.true_label:<11} "
                      "NOT CLASSIFIED")
                continue
            c = events[0].classification
            correct += c.label == sample.true_label
            shown = f"{c.category.id} {' > '.join(c.category.path)} ({c.locale})"
            print(f"{c.listing_id:<22} {c.marketplace:<11} {sample.true_label:<11} {shown:<42} {c.confidence:>10.3f}")

        with stack.gateway_channel() as channel:
            sync_listing = listings[0].listing
            reply = gateway_pb2_grpc.ListingClassifierStub(channel).ClassifyListing(
                gateway_pb2.ClassifyListingRequest(listing=sync_listing), timeout=30)
            print(f"\nsynchronous gRPC ClassifyListing({sync_listing.listing_id}) -> {reply.category.id} "
                  f"{' > '.join(reply.category.path)} ({reply.confidence:.3f})")

        classified = sum(1 for s in listings if s.listing.listing_id in found)
        print(f"\nKafka in to classification published: {elapsed:.1f} s for {len(listings)} listings "
              f"({len(listings) / elapsed:.2f} listings/s on this machine)")
        print(f"models: {' + '.join(stack.triton.model_names)} from triton_models/ (trained by `make models` on the "
              "SYNTHETIC sample catalogue; the demo listings are new drawings, not training images)")
        print(f"sample accuracy: {correct / max(1, classified):.2f} (fused)")
        print(f"classified {classified}/{len(listings)} listings")
        return 0 if classified == len(listings) else 1
    except KeyboardInterrupt:
        print("interrupted; stopping the stack")
        return 130
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
