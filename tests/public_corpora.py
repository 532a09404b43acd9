"""Public corpora of image files, fetched once into .run/corpora/ (pinned, checked by their SHA-256).

Pillow's own test images (its source release's Tests/images: 1,060 files) hold what fuzzers and bug reports found
over the years: files that crashed, exhausted memory or hung a decoder (crash-*, oom-*, timeout-*, ossfuzz-*),
truncated and broken streams, decompression bombs, and the odd corners of every format (12-bit JPEGs, old-style
JPEG in TIFF, 16-bit PNGs, animated GIFs and WebPs, CMYK, EXIF of every shape). A test reads them as a seller's
upload would arrive.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
CORPORA = REPOSITORY_ROOT / ".run" / "corpora"
PILLOW_RELEASE = "pillow-13.0.0"
PILLOW_RELEASE_SHA256 = "cdcd1ba258178f7356d74170c9a81ba4eab6a5d55748bc402a5a2a6fe6be3510"


def pillow_test_images() -> Path:
    """Pillow's Tests/images, from its source release on the package index (47 MB, fetched with pip once)."""
    images = CORPORA / PILLOW_RELEASE / "Tests" / "images"
    if images.is_dir():
        return images
    CORPORA.mkdir(parents=True, exist_ok=True)
    archive = CORPORA / f"{PILLOW_RELEASE}.tar.gz"
    if not archive.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "--dest", str(CORPORA), PILLOW_RELEASE.replace("-", "==")], check=True)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != PILLOW_RELEASE_SHA256:
        archive.unlink()
        raise RuntimeError(f"{archive.name} has SHA-256 {digest}, not the pinned {PILLOW_RELEASE_SHA256}")
    prefix = f"{PILLOW_RELEASE}/Tests/images/"
    partial = CORPORA / f"{PILLOW_RELEASE}.partial"
    with tarfile.open(archive) as release:
        members = [member for member in release.getmembers() if member.name.startswith(prefix)]
        release.extractall(partial, members=members, filter="data")
    (partial / PILLOW_RELEASE).rename(CORPORA / PILLOW_RELEASE)  # whole or not at all
    partial.rmdir()
    return images


def corpus_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())
