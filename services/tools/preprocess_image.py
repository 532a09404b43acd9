"""preprocess-image PATH_OR_URL...: runs the service's own preprocessing on each input and prints one JSON line each.

For operators asking "why was this listing's image rejected?": the same fetch (with its SSRF guard), decode, limits,
product crop and resize as the service, with the same PREPROCESSING_* settings from the environment. Input sizes
come from Triton's model metadata with --triton-url, else --sizes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from services.common.contracts.product_classification.v1 import common_pb2
from services.common.errors import ClassificationError
from services.preprocessing.core import preprocessing_limits
from services.preprocessing.images import prepare_image
from services.preprocessing.settings import PreprocessingSettings
from services.preprocessing.sources import image_bytes


def inspect(source: str, sizes: list[int], settings: PreprocessingSettings) -> dict:
    limits, fetch = preprocessing_limits(settings)
    began = time.perf_counter()
    try:
        if source.lower().startswith(("http://", "https://")) or "://" in source:
            data = image_bytes(common_pb2.Listing(image_url=source), fetch)
        else:
            try:
                data = Path(source).read_bytes()
            except OSError as error:
                return {"input": source, "ok": False, "error_kind": "UNREADABLE_FILE", "reason": str(error)}
        prepared = prepare_image(data, sizes, limits)
    except ClassificationError as error:
        return {"input": source, "ok": False, "error_kind": error.kind.name, "reason": error.reason,
                "ms": round((time.perf_counter() - began) * 1000, 1)}
    return {"input": source, "ok": True, "bytes": len(data), "digest": prepared.digest,
            "decoded_size": list(prepared.decoded_size), "crop_box": list(prepared.crop_box),
            "tensors": {str(size): {"shape": list(t.shape), "dtype": str(t.dtype)} for size, t in
                        prepared.tensors.items()},
            "ms": round((time.perf_counter() - began) * 1000, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="preprocess-image", description=__doc__)
    parser.add_argument("inputs", nargs="+", metavar="PATH_OR_URL")
    parser.add_argument("--triton-url", help="read the models' input sizes from this Triton (host:port)")
    parser.add_argument("--sizes", default="224,299", help="input sizes when no Triton is given")
    options = parser.parse_args(argv)
    settings = PreprocessingSettings(triton_url=options.triton_url or "not-used:0")
    if options.triton_url:
        from services.preprocessing.triton_models import TritonClassifier

        classifier = TritonClassifier(options.triton_url, settings.model_names.split(","),
                                      access_token=settings.triton_token())
        classifier.start()
        sizes = classifier.input_sizes()
        classifier.stop()
    else:
        sizes = [int(s) for s in options.sizes.split(",")]
    failures = 0
    for source in options.inputs:
        result = inspect(source, sizes, settings)
        failures += not result["ok"]
        print(json.dumps(result), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
