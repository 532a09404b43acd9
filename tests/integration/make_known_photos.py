"""Writes known_photos.txt: validation photos the published models get right by a wide margin (fused confidence of
the right label at least 0.97), two per category, so the end-to-end tests can assert the answer itself.

Run after `make models`: python -m tests.integration.make_known_photos
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from services.drivers.traffic import labelled_photos
from services.preprocessing.images import ImageLimits, prepare_image
from services.results.fusion import fuse_arrays
from services.trainer.pretrained import onnx_session, run_onnx

REPOSITORY = Path(__file__).resolve().parents[2] / "triton_models"


def main() -> None:
    fusion = json.loads((REPOSITORY / "fusion.json").read_text())
    models = {name: entry for name, entry in fusion["models"].items() if entry["weight"] > 0}
    photos = labelled_photos()
    sizes = {}
    for name, entry in models.items():
        config = (REPOSITORY / name / "config.pbtxt").read_text()
        sizes[name] = int(config.split("dims: ")[1].split()[0])
    prepared = [prepare_image(path.read_bytes(), sorted(set(sizes.values())), ImageLimits()) for path, _ in photos]
    outputs = [run_onnx(onnx_session(REPOSITORY / name / str(entry["version"]) / "model.onnx"),
                        np.stack([p.tensors[sizes[name]] for p in prepared])) for name, entry in models.items()]
    fused = fuse_arrays(outputs, [entry["weight"] for entry in models.values()])
    labels = fusion["labels"]
    chosen = []
    for label in labels:
        index = labels.index(label)
        candidates = sorted(((fused[i, index], i) for i, (_, truth) in enumerate(photos)
                             if truth == label and fused[i].argmax() == index and fused[i, index] >= 0.97),
                            reverse=True)
        chosen.extend(i for _, i in candidates[:2])
    lines = ["# validation photo (relative to the validation folder), its label: right by a wide margin (fused",
             "# confidence >= 0.97) with the models of `make models`. Regenerate: python -m tests.integration.make_known_photos"]
    lines += [f"{photos[i][0].parent.name}/{photos[i][0].name} {photos[i][1]}" for i in chosen]
    Path(__file__).with_name("known_photos.txt").write_text("\n".join(lines) + "\n")
    print(f"{len(chosen)} photos written")


if __name__ == "__main__":
    main()
