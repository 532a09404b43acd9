"""classify-image PATH_OR_URL... : sends each photo to the running gateway over gRPC and prints what came back.

The gateway's address and API key come from --gateway and --api-key-file (or --api-key, which `ps` shows), else
PRODUCT_CLASSIFICATION_GATEWAY and PRODUCT_CLASSIFICATION_API_KEY, else the files `make up` wrote in .run/up/. One
line (or one JSON line with --json) per photo; an error is the gateway's kind and reason on one line, never a
traceback. Exits 1 if any photo failed, 2 if the key file cannot be used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import grpc

from services.common.contracts.product_classification.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.common.errors import ERROR_KIND_METADATA_KEY
from services.common.grpc_security import with_api_key
from services.tools.caller_settings import CallerSettingError, add_api_key_options, api_key, default_setting


def listing_for(source: str, index: int, marketplace: str, locale: str) -> common_pb2.Listing:
    listing = common_pb2.Listing(listing_id=f"cli-{os.getpid()}-{index}", marketplace=marketplace, locale=locale)
    if "://" in source:  # a URL; the gateway says which schemes it takes
        listing.image_url = source
    else:
        listing.image_bytes = Path(source).read_bytes()
    return listing


def describe(source: str, c: common_pb2.Classification) -> dict:
    return {"source": source, "status": common_pb2.ClassificationStatus.Name(c.status).removeprefix(
                "CLASSIFICATION_STATUS_"),
            "category_id": c.category.id, "category": c.category.name, "path": list(c.category.path),
            "locale": c.category.locale, "confidence": round(c.confidence, 4),
            "google_category": c.category.google_category.name,
            "hs_headings": sorted({code.heading for code in c.category.customs_codes}),
            "candidates": [{"label": k.label, "category": k.category.name, "confidence": round(k.confidence, 4)}
                           for k in c.candidates]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="classify-image", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", metavar="PATH_OR_URL")
    parser.add_argument("--marketplace", default="de-modehaus")
    parser.add_argument("--locale", default="", help="e.g. de-DE, ja, pt-BR (default: the marketplace's)")
    parser.add_argument("--json", action="store_true", help="one JSON line per photo")
    parser.add_argument("--gateway", default=None, help="host:port (default: the one `make up` started)")
    add_api_key_options(parser, "the key `make up` generated")
    parser.add_argument("--timeout", type=float, default=60.0)
    options = parser.parse_args(argv)
    address = (options.gateway or default_setting("PRODUCT_CLASSIFICATION_GATEWAY", "gateway-address")
               or "127.0.0.1:50051")
    try:
        key = api_key(options, "PRODUCT_CLASSIFICATION_API_KEY", "gateway-api-key")
    except CallerSettingError as error:
        print(f"classify-image: {error}", file=sys.stderr)
        return 2
    failed = 0
    with with_api_key(grpc.insecure_channel(address), key) as channel:
        stub = gateway_pb2_grpc.ListingClassifierStub(channel)
        for index, source in enumerate(options.sources):
            try:
                listing = listing_for(source, index, options.marketplace, options.locale)
                reply = stub.ClassifyListing(gateway_pb2.ClassifyListingRequest(listing=listing),
                                             timeout=options.timeout)
            except OSError as error:
                failed += 1
                print(_error_line(options.json, source, "UNREADABLE_FILE", error.strerror or str(error)))
                continue
            except grpc.RpcError as error:
                failed += 1
                # The gateway's own kind when it sent one (INVALID_IMAGE, ...), else the gRPC status (UNAUTHENTICATED).
                kind = next((str(v) for k, v in error.trailing_metadata() or () if k == ERROR_KIND_METADATA_KEY),
                            error.code().name)
                print(_error_line(options.json, source, kind, error.details() or error.code().name))
                continue
            found = describe(source, reply)
            if options.json:
                print(json.dumps(found, ensure_ascii=False))
            else:
                others = ", ".join(f"{k['category']} {k['confidence']:.2f}" for k in found["candidates"][1:])
                print(f"{source}: {found['category']} [{found['locale']}] {found['confidence']:.2f} {found['status']}"
                      f" ({' > '.join(found['path'])}; HS {', '.join(found['hs_headings'])}; also: {others or '-'})")
    return 1 if failed else 0


def _error_line(as_json: bool, source: str, kind: str, reason: str) -> str:
    if as_json:
        return json.dumps({"source": source, "error": kind, "reason": reason}, ensure_ascii=False)
    return f"{source}: {kind}: {reason}"


if __name__ == "__main__":
    sys.exit(main())
