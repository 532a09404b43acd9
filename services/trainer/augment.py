"""Training-time data augmentation on uint8 batches: flips, random crops with scale jitter, colour jitter."""

from __future__ import annotations

import numpy as np
from PIL import Image


def augment_batch(images: np.ndarray, rng: np.random.Generator, scale_range=(0.7, 1.0),
                  colour_jitter: float = 0.2) -> np.ndarray:
    """Returns a new batch: each image flipped at random, cropped to a random scale and place, resized back, and
    its brightness, contrast and per-channel colour jittered."""
    count, size = images.shape[0], images.shape[1]
    out = np.empty_like(images)
    for i in range(count):  # training only; serving never runs this
        image = images[i]
        if rng.random() < 0.5:
            image = image[:, ::-1]
        side = int(size * rng.uniform(*scale_range))
        top, left = rng.integers(0, size - side + 1, 2)
        crop = np.ascontiguousarray(image[top:top + side, left:left + side])
        out[i] = np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR)) if side != size else crop
    pixels = out.astype(np.float32)
    contrast = rng.uniform(1 - colour_jitter, 1 + colour_jitter, (count, 1, 1, 1))
    brightness = rng.uniform(-colour_jitter, colour_jitter, (count, 1, 1, 1)) * 255
    channel = rng.uniform(1 - colour_jitter / 2, 1 + colour_jitter / 2, (count, 1, 1, 3))
    mean = pixels.mean(axis=(1, 2, 3), keepdims=True)
    pixels = ((pixels - mean) * contrast + mean + brightness) * channel
    return np.clip(pixels, 0, 255).astype(np.uint8)
