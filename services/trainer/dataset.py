"""Loads a labelled catalogue laid out one folder per category (the layout marketplaces export).

Every image goes through the preprocessing service's own code (decode, product crop, resize), so training sees
the pixels serving will see. Unreadable images are skipped and counted, never fatal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from services.common.errors import ClassificationError
from services.preprocessing.images import ImageLimits, prepare_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif"}


class DatasetError(ValueError):
    """The catalogue cannot be trained on; the message says what to fix."""


@dataclass
class Dataset:
    categories: list[str]
    images: np.ndarray  # uint8 (N, size, size, 3)
    labels: np.ndarray  # int (N,) indices into categories
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason

    def split(self, validation_fraction: float, seed: int) -> tuple["Dataset", "Dataset"]:
        """Stratified: each category keeps the same share in the held-out validation split."""
        rng = np.random.default_rng(seed)
        validation: list[int] = []
        for index in range(len(self.categories)):
            members = np.flatnonzero(self.labels == index)
            rng.shuffle(members)
            validation.extend(members[:max(1, round(len(members) * validation_fraction))])
        mask = np.zeros(len(self.labels), bool)
        mask[validation] = True
        return (Dataset(self.categories, self.images[~mask], self.labels[~mask]),
                Dataset(self.categories, self.images[mask], self.labels[mask]))


def load_catalogue(folder: Path, input_size: int, min_per_category: int = 5,
                   limits: ImageLimits = ImageLimits(), progress: bool = True) -> Dataset:
    return load_catalogue_sizes(folder, [input_size], min_per_category, limits, progress)[input_size]


def load_catalogue_sizes(folder: Path, input_sizes: list[int], min_per_category: int = 5,
                         limits: ImageLimits = ImageLimits(), progress: bool = True,
                         categories: list[str] | None = None) -> dict[int, Dataset]:
    """Every photo decoded once and prepared at each input size (the same files, in the same order, at every size).

    categories: the label order to use (a validation split must share its training split's); every folder must be
    one of them.
    """
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder")
    category_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(category_dirs) < 2 and categories is None:
        raise DatasetError(f"{folder} must hold one folder per category, at least 2; found {len(category_dirs)}")
    if categories is not None:
        unknown = [d.name for d in category_dirs if d.name not in categories]
        if unknown:
            raise DatasetError(f"{folder}: folders that are no known category: {', '.join(unknown)}")
    files = {d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) for d in category_dirs}
    too_few = {name: len(paths) for name, paths in files.items() if len(paths) < min_per_category}
    if too_few:
        raise DatasetError(f"categories with fewer than {min_per_category} images: "
                           + ", ".join(f"{n} ({c})" for n, c in too_few.items()))
    categories = categories or [d.name for d in category_dirs]
    images: dict[int, list[np.ndarray]] = {size: [] for size in input_sizes}
    labels, skipped = [], {}
    work = [(categories.index(name), path) for name in sorted(files) for path in files[name]]
    sizes = ",".join(str(s) for s in input_sizes)
    for index, path in tqdm(work, desc=f"loading {folder.name} at {sizes}px", unit="img", disable=not progress):
        try:
            prepared = prepare_image(path.read_bytes(), list(input_sizes), limits)
        except (ClassificationError, OSError) as error:
            skipped[str(path)] = getattr(error, "reason", str(error))
            continue
        for size in input_sizes:
            images[size].append(prepared.tensors[size])
        labels.append(index)
    kept = np.bincount(np.asarray(labels, int), minlength=len(categories))
    present = [categories.index(name) for name in files]
    if (kept[present] < min_per_category).any():
        short = [f"{categories[i]} ({kept[i]} readable)" for i in present if kept[i] < min_per_category]
        raise DatasetError(f"too few readable images in: {', '.join(short)}")
    label_array = np.asarray(labels, np.int64)
    return {size: Dataset(categories, np.stack(images[size]), label_array, skipped) for size in input_sizes}
