"""make export-corrections OUT=DIR [BASE=CATALOGUE]: operators' corrections as a catalogue `make train` takes.

Reads the corrections and the kept thumbnails over the result service's gRPC API (never the database). Each photo
of a listing counts once, by its latest correction; the photo goes to the folder of the model label the marketplace
maps the chosen category to. A category the models have no label for is left out (listed in skipped.csv) unless
--include-new-categories, which makes it a new class named by its taxonomy id. With --base CATALOGUE (one holding
train/ and validation/, such as the clothing photos), the export is a whole catalogue: the base's photos (linked, not
copied) plus the corrections in train/, the base's validation/ unchanged, so the next model is chosen on the same
photos as the last one.

The result service's address and key come from --results and --api-key-file (or --api-key, which `ps` shows), else
PRODUCT_CLASSIFICATION_RESULTS and PRODUCT_CLASSIFICATION_RESULTS_API_KEY, else the files `make up` wrote in
.run/up/. Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import sys
from pathlib import Path

import grpc

from services.common.contracts.product_classification.v1 import results_pb2, results_pb2_grpc
from services.common.grpc_security import with_api_key
from services.tools.caller_settings import CallerSettingError, add_api_key_options, api_key, default_setting

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def safe_name(text: str, limit: int = 80) -> str:
    """A file name from a seller's id: nothing that climbs folders or confuses a shell."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:limit].lstrip(".") or "listing"


def latest_corrections(stub, marketplace: str) -> list:
    """The latest correction of each photo of each listing (the API pages newest first): a listing whose seller
    replaced its photo can hold a verdict on each, and each is a labelled photo."""
    latest, before = {}, 0
    while True:
        page = stub.ListCorrections(results_pb2.ListCorrectionsRequest(marketplace=marketplace, page_size=500,
                                                                       before_sequence=before), timeout=30)
        for correction in page.corrections:
            latest.setdefault((correction.listing_id, correction.model_answer.image_digest), correction)
        if not page.next_before_sequence:
            return list(latest.values())
        before = page.next_before_sequence


def link_base(base: Path, out: Path) -> int:
    """The base catalogue's photos, linked into out/train and out/validation."""
    linked = 0
    for split in ("train", "validation"):
        for category in sorted(p for p in (base / split).iterdir() if p.is_dir()):
            target = out / split / category.name
            target.mkdir(parents=True, exist_ok=True)
            for photo in category.iterdir():
                if photo.suffix.lower() in IMAGE_SUFFIXES and not (target / photo.name).exists():
                    try:
                        os.symlink(photo.resolve(), target / photo.name)
                    except OSError:
                        shutil.copyfile(photo, target / photo.name)
                    linked += 1
    return linked


def export(stub, out: Path, marketplace: str, include_new: bool, base: Path | None) -> dict:
    if base is not None and not ((base / "train").is_dir() and (base / "validation").is_dir()):
        raise ValueError(f"--base {base} must hold train/ and validation/")
    photos_dir = out / "train" if base is not None else out
    photos_dir.mkdir(parents=True, exist_ok=True)
    counts = {"exported": 0, "no_photo_kept": 0, "category_without_label": 0}
    rows, skipped = [], []
    for correction in latest_corrections(stub, marketplace):
        short_id = correction.category.id.rsplit("/", 1)[-1]
        folder = correction.label or (short_id if include_new else "")
        if not folder:
            counts["category_without_label"] += 1
            skipped.append([correction.listing_id, correction.category.id, "the models have no label for it"])
            continue
        digest = correction.model_answer.image_digest
        try:
            thumbnail = stub.GetThumbnail(results_pb2.GetThumbnailRequest(image_digest=digest), timeout=30)
        except grpc.RpcError as error:
            if error.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise
            counts["no_photo_kept"] += 1
            skipped.append([correction.listing_id, correction.category.id, "no photo kept"])
            continue
        path = photos_dir / safe_name(folder) / f"{safe_name(correction.listing_id)}-{digest[:12]}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(thumbnail.jpeg)
        counts["exported"] += 1
        rows.append([str(path.relative_to(out)), correction.listing_id, correction.marketplace, correction.category.id,
                     folder, correction.model_answer.label, correction.operator, correction.corrected_at.ToJsonString()])
    with open(out / "corrections.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["file", "listing_id", "marketplace", "category_id", "label", "model_label", "operator",
                         "corrected_at"])
        writer.writerows(rows)
    with open(out / "skipped.csv", "w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows([["listing_id", "category_id", "why"], *skipped])
    if base is not None:
        counts["base_photos_linked"] = link_base(base, out)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="export-corrections", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--base", type=Path, default=None, help="a catalogue with train/ and validation/ to add to")
    parser.add_argument("--marketplace", default="", help="only this marketplace's corrections")
    parser.add_argument("--include-new-categories", action="store_true")
    parser.add_argument("--results", default=None, help="host:port (default: the one `make up` started)")
    add_api_key_options(parser, "the key `make up` generated")
    options = parser.parse_args(argv)
    address = options.results or default_setting("PRODUCT_CLASSIFICATION_RESULTS", "results-address")
    try:
        key = api_key(options, "PRODUCT_CLASSIFICATION_RESULTS_API_KEY", "results-api-key")
    except CallerSettingError as error:
        print(f"export-corrections: {error}", file=sys.stderr)
        return 2
    if not address:
        print("export-corrections: no result service; start one with `make up` or pass --results", file=sys.stderr)
        return 2
    try:
        with with_api_key(grpc.insecure_channel(address), key) as channel:
            counts = export(results_pb2_grpc.ClassificationResultsStub(channel), options.out, options.marketplace,
                            options.include_new_categories, options.base)
    except grpc.RpcError as error:
        print(f"export-corrections: the result service answered {error.code().name}: {error.details()}",
              file=sys.stderr)
        return 1
    except (ValueError, OSError) as error:
        print(f"export-corrections: {error}", file=sys.stderr)
        return 2
    layout = "train/ and validation/" if options.base else "one folder per category"
    print(f"{counts['exported']} corrected photos exported to {options.out} ({layout}); "
          f"train on it with: make train CATALOGUE={options.out}")
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
