"""The gateway called by a client in another language on another HTTP/2 stack: Node.js's own http2 module with the
protobuf written and read by hand (tests/interop/classify_listing.mjs), no gRPC or protobuf library. What it needs
is only what proto/ and gRPC's HTTP/2 protocol say: the answer, the error kind in the trailers, compressed requests
as Go and Java clients can send them."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from services.common.contracts.product_classification.v1 import common_pb2
from services.trainer.real_models import clothing_dataset
from tests.integration.test_pipeline import GARBAGE_IMAGE, KNOWN_PHOTOS, mapped_category

pytestmark = pytest.mark.integration

CLIENT = Path(__file__).parents[1] / "interop" / "classify_listing.mjs"
NODE = shutil.which("node")


def call(stack, listing_id: str, photo: Path, key: str | None = "stack", compression: str = "") -> dict:
    if NODE is None:
        pytest.skip("no Node.js on this machine")  # the only skip: the other language's runtime
    api_key = stack.gateway_api_key if key == "stack" else (key or "")
    finished = subprocess.run([NODE, str(CLIENT), stack.services["gateway"].address, api_key, listing_id,
                               "de-modehaus", str(photo), compression], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    return json.loads(finished.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("compression", ["", "gzip"])
def test_a_node_client_classifies_a_real_photo(stack, compression):
    photo, label = KNOWN_PHOTOS[0]
    answer = call(stack, f"node-{compression or 'plain'}", clothing_dataset() / "validation" / photo,
                  compression=compression)
    assert answer["grpc_status"] == 0, answer
    assert answer["content_type"].startswith("application/grpc")
    assert answer["listing_id"] == f"node-{compression or 'plain'}"
    assert answer["label"] == label and answer["confidence"] > 0.5 and answer["candidates"] >= 1
    # what the hand decoding read is what the generated classes read
    parsed = common_pb2.Classification.FromString(base64.b64decode(answer["response_b64"]))
    assert parsed.category.name == answer["category_name"] and parsed.label == label
    assert parsed.category.id == mapped_category("de-modehaus", label)


def test_a_node_client_reads_the_error_kind_and_reason_from_the_trailers(stack, tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(GARBAGE_IMAGE)
    answer = call(stack, "node-garbage", garbage)
    assert answer["grpc_status"] == 3, answer  # INVALID_ARGUMENT
    assert answer["error_kind"] == "INVALID_IMAGE" and answer["grpc_message"]
    assert "response_b64" not in answer

    photo = clothing_dataset() / "validation" / KNOWN_PHOTOS[0][0]
    refused = call(stack, "node-no-key", photo, key=None)
    assert refused["grpc_status"] == 16, refused  # UNAUTHENTICATED
    wrong = call(stack, "node-wrong-key", photo, key="not-a-key")
    assert wrong["grpc_status"] == 16 and "not valid" in wrong["grpc_message"], wrong
