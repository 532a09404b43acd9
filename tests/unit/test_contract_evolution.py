"""A client built from the previous proto still reads the new messages (fields added, none renumbered)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from grpc_tools import protoc

from services.common.contracts.product_classification.v1 import common_pb2, events_pb2

PREVIOUS = Path(__file__).resolve().parents[1] / "contracts" / "previous"

READER = """
import sys
sys.path.insert(0, sys.argv[1])
from product_classification.v1 import events_pb2
event = events_pb2.ListingClassified.FromString(sys.stdin.buffer.read())
c = event.classification
print(c.listing_id, c.status, c.category.id, c.category.name, "/".join(c.category.path), round(c.confidence, 3),
      c.candidates[0].label, c.candidates[0].category.name)
"""


def test_a_client_of_the_previous_proto_reads_a_new_classification(tmp_path):
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = [str(p.relative_to(PREVIOUS)) for p in PREVIOUS.rglob("*.proto")]
    assert protoc.main(["protoc", f"-I{PREVIOUS}", f"-I{include}", f"--python_out={tmp_path}", *protos]) == 0
    for folder in (tmp_path / "product_classification", tmp_path / "product_classification" / "v1"):
        (folder / "__init__.py").touch()
    category = common_pb2.Category(
        id="gid://shopify/TaxonomyCategory/aa-1-4", name="Kleider", path=["Bekleidung & Accessoires", "Kleider"],
        locale="de", google_category=common_pb2.GoogleProductCategory(id="2271", name="Dresses"),
        customs_codes=[common_pb2.CustomsCode(code="610442", description="Dresses", heading="6104",
                                              depends_on={"construction": "knitted or crocheted"})])
    event = events_pb2.ListingClassified(classification=common_pb2.Classification(
        listing_id="l-1", status=common_pb2.CLASSIFICATION_STATUS_NEEDS_REVIEW, category=category, label="dress",
        confidence=0.55, review_threshold=0.8,
        candidates=[common_pb2.CategoryCandidate(category=category, label="dress", confidence=0.55)]))
    run = subprocess.run([sys.executable, "-c", READER, str(tmp_path)], input=event.SerializeToString(),
                         capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr.decode()
    # The old client sees every field it knew; the new status arrives as its number (open enum).
    assert run.stdout.decode().split() == ["l-1", "3", "gid://shopify/TaxonomyCategory/aa-1-4", "Kleider",
                                           "Bekleidung", "&", "Accessoires/Kleider", "0.55", "dress", "Kleider"]
