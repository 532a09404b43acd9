"""`make bench-preprocess`: the service's preprocessing against the straightforward Pillow path, same photos.

Photos: real photographs shipped in the scikit-image wheel, upscaled to about 6 megapixels and saved as JPEG (a
phone photo's size; the pixels are the photographs' own, interpolated). The service prepares both models' inputs
(224 and 299, product crop included); the baseline only one (open, convert to RGB, resize to 224, float32,
normalise, transpose), so the comparison favours the baseline. Prints one line of JSON last.
"""

from __future__ import annotations

import io
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

from services.preprocessing.images import ImageLimits, prepare_image

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def baseline(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.BILINEAR)
    return ((np.asarray(image, np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)


def photos(megapixels: float = 6.0) -> list[bytes]:
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    encoded = []
    for name in ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg", "retina.jpg",
                 "hubble_deep_field.jpg"):
        image = Image.open(folder / name).convert("RGB")
        scale = (megapixels * 1e6 / (image.width * image.height)) ** 0.5
        large = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
        buffer = io.BytesIO()
        large.save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return encoded


def timed(function, inputs: list[bytes], rounds: int) -> list[float]:
    durations = []
    for _ in range(rounds):
        for data in inputs:
            began = time.perf_counter()
            function(data)
            durations.append(time.perf_counter() - began)
    return durations


def measure(path: str, rounds: int) -> list[float]:
    """Times one path in this process after one warm-up round."""
    inputs = photos()
    limits = ImageLimits()
    function = baseline if path == "baseline" else (lambda d: prepare_image(d, [224, 299], limits))
    timed(function, inputs, 1)
    return timed(function, inputs, rounds)


def measure_in_fresh_process(path: str, rounds: int) -> list[float]:
    """Each path gets its own process: the allocator's state left by one path changes the other's speed."""
    import subprocess
    import sys

    output = subprocess.run([sys.executable, "-m", "services.drivers.benchmarks.preprocess", "--measure", path,
                             str(rounds)], check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    import sys

    if len(sys.argv) == 4 and sys.argv[1] == "--measure":
        print(json.dumps(measure(sys.argv[2], int(sys.argv[3]))))
        return
    inputs = photos()
    # Each path's best of three processes: the baseline's speed is bimodal across processes (allocator and page
    # faults on its full-size decodes), and the comparison must not catch it on a slow day.
    service = min((measure_in_fresh_process("service", 4) for _ in range(3)), key=sum)
    straightforward = min((measure_in_fresh_process("baseline", 2) for _ in range(3)), key=sum)
    megapixels = np.mean([Image.open(io.BytesIO(d)).width * Image.open(io.BytesIO(d)).height for d in inputs]) / 1e6
    print(f"{len(inputs)} JPEG photos of {megapixels:.1f} MP on average, {np.mean([len(d) for d in inputs]) / 1e6:.1f} "
          f"MB each; service: both model inputs (224 and 299) with the product crop; baseline: one 224 input")
    rate = len(service) / sum(service)
    baseline_rate = len(straightforward) / sum(straightforward)
    print(json.dumps({
        "images_per_s": round(rate, 2),
        "baseline_images_per_s": round(baseline_rate, 2),
        "speedup": round(rate / baseline_rate, 2),
        "p50_ms": round(float(np.percentile(service, 50)) * 1000, 2),
        "p99_ms": round(float(np.percentile(service, 99)) * 1000, 2),
        "baseline_p50_ms": round(float(np.percentile(straightforward, 50)) * 1000, 2),
        "photo_megapixels": round(float(megapixels), 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, one thread",
    }))


if __name__ == "__main__":
    main()
