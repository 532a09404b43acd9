"""Draws a SYNTHETIC labelled catalogue of product images (no real photos: the repository has no licence to ship any).

Each category is a simple drawn silhouette (a T-shirt, a sneaker, a bottle, ...) with random colour, pose, scale,
position and background; some images get clutter, like the research's "noise" pictures. Written one folder per
category, the layout marketplaces export, and used by the demo, the tests and the trainer.
"""

from __future__ import annotations

import argparse
import io
import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

CATEGORIES = ("tshirt", "dress", "trousers", "sneakers", "boots", "handbag", "backpack", "bottle", "mug", "wristwatch")

# Each shape is a polygon list (and ellipses) in a unit box, drawn scaled and rotated.
_Polygon = list[tuple[float, float]]
_SHAPES: dict[str, list[_Polygon]] = {
    "tshirt": [[(0.3, 0.1), (0.42, 0.15), (0.58, 0.15), (0.7, 0.1), (0.95, 0.3), (0.85, 0.42), (0.75, 0.36),
                (0.75, 0.92), (0.25, 0.92), (0.25, 0.36), (0.15, 0.42), (0.05, 0.3)]],
    "dress": [[(0.4, 0.05), (0.6, 0.05), (0.62, 0.35), (0.9, 0.95), (0.1, 0.95), (0.38, 0.35)]],
    "trousers": [[(0.3, 0.05), (0.7, 0.05), (0.78, 0.95), (0.58, 0.95), (0.5, 0.35), (0.42, 0.95), (0.22, 0.95)]],
    "sneakers": [[(0.05, 0.55), (0.4, 0.45), (0.55, 0.3), (0.7, 0.35), (0.95, 0.6), (0.95, 0.72), (0.05, 0.72)]],
    "boots": [[(0.3, 0.05), (0.6, 0.05), (0.6, 0.6), (0.92, 0.72), (0.92, 0.9), (0.3, 0.9)]],
    "handbag": [[(0.15, 0.4), (0.85, 0.4), (0.92, 0.9), (0.08, 0.9)],
                [(0.3, 0.4), (0.35, 0.15), (0.65, 0.15), (0.7, 0.4), (0.62, 0.4), (0.58, 0.22), (0.42, 0.22),
                 (0.38, 0.4)]],
    "backpack": [[(0.25, 0.15), (0.75, 0.15), (0.85, 0.3), (0.85, 0.92), (0.15, 0.92), (0.15, 0.3)],
                 [(0.3, 0.55), (0.7, 0.55), (0.7, 0.85), (0.3, 0.85)]],
    "bottle": [[(0.44, 0.05), (0.56, 0.05), (0.56, 0.25), (0.66, 0.35), (0.66, 0.95), (0.34, 0.95), (0.34, 0.35),
                (0.44, 0.25)]],
    "mug": [[(0.2, 0.2), (0.7, 0.2), (0.7, 0.9), (0.2, 0.9)],
            [(0.7, 0.35), (0.88, 0.35), (0.88, 0.72), (0.7, 0.72), (0.7, 0.64), (0.8, 0.64), (0.8, 0.43), (0.7, 0.43)]],
    "wristwatch": [[(0.4, 0.02), (0.6, 0.02), (0.6, 0.98), (0.4, 0.98)]],
}
_ROUND_PARTS = {"wristwatch": (0.5, 0.5, 0.24), "mug": None}


@dataclass(frozen=True)
class SampleImage:
    category: str
    jpeg: bytes


def _random_colour(rng: random.Random, light: bool) -> tuple[int, int, int]:
    low, high = (200, 255) if light else (0, 200)
    return tuple(rng.randint(low, high) for _ in range(3))  # type: ignore[return-value]


def draw_product(category: str, rng: random.Random, size: int = 320) -> Image.Image:
    """One synthetic product photo of the category: plain or cluttered background, random pose and colour."""
    background = _random_colour(rng, light=True)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.25:  # clutter: the research's "noise" pictures
        for _ in range(rng.randint(2, 6)):
            x, y, r = rng.randint(0, size), rng.randint(0, size), rng.randint(5, size // 8)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=_random_colour(rng, light=rng.random() < 0.5))
    scale = rng.uniform(0.45, 0.85) * size
    angle = math.radians(rng.uniform(-20, 20))
    cx = rng.uniform(0.35, 0.65) * size
    cy = rng.uniform(0.35, 0.65) * size
    colour = _random_colour(rng, light=False)

    def place(u: float, v: float) -> tuple[float, float]:
        x, y = (u - 0.5) * scale, (v - 0.5) * scale
        return cx + x * math.cos(angle) - y * math.sin(angle), cy + x * math.sin(angle) + y * math.cos(angle)

    for index, polygon in enumerate(_SHAPES[category]):
        shade = colour if index == 0 else tuple(max(0, c - 50) for c in colour)
        draw.polygon([place(u, v) for u, v in polygon], fill=shade)
    round_part = _ROUND_PARTS.get(category)
    if round_part:
        u, v, r = round_part
        x, y = place(u, v)
        radius = r * scale
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(230, 230, 230),
                     outline=tuple(max(0, c - 60) for c in colour), width=max(2, int(radius / 5)))
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return image


def sample_images(count: int, seed: int = 0, size: int = 320) -> list[SampleImage]:
    """count synthetic JPEGs, categories in turn, reproducible from the seed."""
    rng = random.Random(seed)
    samples = []
    for index in range(count):
        category = CATEGORIES[index % len(CATEGORIES)]
        buffer = io.BytesIO()
        draw_product(category, rng, size).save(buffer, format="JPEG", quality=rng.randint(80, 95))
        samples.append(SampleImage(category, buffer.getvalue()))
    return samples


def write_catalogue(destination: Path, per_category: int, seed: int = 0, size: int = 320) -> int:
    """Writes destination/<category>/<n>.jpg; returns the number of images written."""
    written = 0
    for index, sample in enumerate(sample_images(per_category * len(CATEGORIES), seed, size)):
        folder = destination / sample.category
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:05d}.jpg").write_bytes(sample.jpeg)
        written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("destination", type=Path)
    parser.add_argument("--per-category", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    count = write_catalogue(options.destination, options.per_category, options.seed)
    print(f"wrote {count} SYNTHETIC images in {len(CATEGORIES)} categories to {options.destination}")


if __name__ == "__main__":
    main()
