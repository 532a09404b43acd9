"""onnxruntime-gpu for a lent GPU machine, in parts that each fit one device call.

`make bench-gpu BENCH_ARGS=--engine=ort-cuda` runs the published graphs with ONNX Runtime's CUDA provider in FP16
(ort_cuda_model.py, beside this file). That machine has no network and takes at most 64 MiB per call, and the
onnxruntime-gpu wheel is 244 MiB, most of it CUDA kernels compiled for six GPU generations. So this module:
- downloads the wheel for Python 3.12 (CUDA 13 and cuDNN 9, the GPU image's PyTorch's: nothing else to carry);
- keeps only the kernels for the lent GPUs' architecture (sm_90: H100, H200): the other generations' kernels inside
  the CUDA provider's fatbinary keep their headers and have their bytes zeroed, so the library keeps its layout and
  loads as it was built, and packs to a fifth of the bytes;
- packs the package as one tar.xz and splits it into folders .gpu-ort/p00, p01, ... of at most PART_BYTES, each
  with the manifest (the archive's sha256 and the number of parts).

On the lent machine each part travels in a call of its own while the machine stays warm (what a call carried stays in
its checkout), then benchmarks/gpu.py joins them, checks the digest and unpacks the package (assemble()). README
(`make bench-gpu`, "ONNX Runtime's CUDA provider in FP16") gives the calls.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[4]
ORT_GPU = "onnxruntime-gpu==1.31.1"  # built for CUDA 13 and cuDNN 9, as the GPU image's torch 2.11+cu130
GPU_ARCHITECTURES = (90,)  # sm_90: the H100 and H200 the device tool lends
PART_BYTES = 56 * 2**20  # the checkout travels too, within the 64 MiB of a call
PARTS = REPOSITORY_ROOT / ".gpu-ort"
CACHE = REPOSITORY_ROOT / ".gpu-cache"
ARCHIVE = "onnxruntime-gpu.tar.xz"
MANIFEST = "manifest.json"
FATBIN_MAGIC = 0xBA55ED50
FATBIN_SECTION = ".nv_fatbin"


class PackError(RuntimeError):
    """What was packed, or what arrived, is not what it should be."""


def elf_section(data: bytes, name: str) -> tuple[int, int]:
    """(file offset, size) of the named section of a 64-bit little-endian ELF file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise PackError("not a 64-bit little-endian ELF file")
    section_offset, = struct.unpack_from("<Q", data, 0x28)
    entry_size, count, names_index = struct.unpack_from("<HHH", data, 0x3A)

    def header(index: int) -> tuple[int, int, int]:
        name_at, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", data, section_offset + index * entry_size)
        return name_at, offset, size

    _, names_offset, _ = header(names_index)
    for index in range(count):
        name_at, offset, size = header(index)
        start = names_offset + name_at
        if data[start:data.index(b"\0", start)].decode() == name:
            return offset, size
    raise PackError(f"no {name} section")


def keep_architectures(section: memoryview, keep: tuple[int, ...]) -> tuple[int, int]:
    """Zeroes the payload of every entry of the fatbinaries in `section` (writable) compiled for an architecture not
    in `keep`; headers stay, so every offset and size stays. Returns (bytes kept, bytes zeroed)."""
    kept = zeroed = position = 0
    while position + 16 <= len(section):
        magic, _, header_size, body_size = struct.unpack_from("<IHHQ", section, position)
        if magic != FATBIN_MAGIC:
            position += 8  # containers are 8-byte aligned, padding between them
            continue
        entry, end = position + header_size, position + header_size + body_size
        if end > len(section):
            raise PackError(f"a fatbinary at {position} runs past its section")
        while entry < end:
            _, _, entry_header, payload = struct.unpack_from("<HHII", section, entry)
            architecture, = struct.unpack_from("<I", section, entry + 28)
            start = entry + entry_header
            if entry_header < 32 or start + payload > end:
                raise PackError(f"a fatbinary entry at {entry} is malformed")
            if architecture in keep:
                kept += payload
            else:
                section[start:start + payload] = bytes(payload)
                zeroed += payload
            entry = start + payload
        position = end
    if not kept:
        raise PackError(f"no kernels for sm_{keep}: the library would not run there")
    return kept, zeroed


def prune_library(path: Path, keep: tuple[int, ...] = GPU_ARCHITECTURES) -> tuple[int, int]:
    data = bytearray(path.read_bytes())
    offset, size = elf_section(data, FATBIN_SECTION)
    figures = keep_architectures(memoryview(data)[offset:offset + size], keep)
    path.write_bytes(data)
    return figures


def download_wheel(cache: Path = CACHE) -> Path:
    name, version = ORT_GPU.split("==")
    found = sorted(cache.glob(f"{name.replace('-', '_')}-{version}-cp312-*.whl"))
    if found:
        return found[0]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                    "--dest", str(cache), ORT_GPU], check=True)
    return download_wheel(cache)


def pack(destination: Path, wheel: Path, part_bytes: int = PART_BYTES,
         keep: tuple[int, ...] = GPU_ARCHITECTURES) -> list[Path]:
    """The wheel's files (the package, pruned, and its dist-info) as one tar.xz in parts under destination/pNN/.
    Returns the part folders."""
    shutil.rmtree(destination, ignore_errors=True)
    destination.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as scratch:
        unpacked = Path(scratch) / "site"
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(unpacked)
        for library in sorted(unpacked.glob("onnxruntime/capi/libonnxruntime_providers_cuda*.so")):
            kept, zeroed = prune_library(library, keep)
            print(f"{library.name}: kernels for sm_{'/'.join(map(str, keep))} kept ({kept / 2**20:.0f} MiB), "
                  f"{zeroed / 2**20:.0f} MiB for other GPUs zeroed", flush=True)
        packed = Path(scratch) / ARCHIVE
        with tarfile.open(packed, "w:xz", preset=6) as archive:
            for path in sorted(unpacked.iterdir()):
                archive.add(path, path.name, filter=lambda info: None if "__pycache__" in info.name else info)
        digest = hashlib.sha256(packed.read_bytes()).hexdigest()
        folders = []
        with packed.open("rb") as source:
            while chunk := source.read(part_bytes):
                folder = destination / f"p{len(folders):02d}"
                folder.mkdir()
                (folder / f"{ARCHIVE}.{len(folders):02d}").write_bytes(chunk)
                folders.append(folder)
    manifest = json.dumps({"package": ORT_GPU, "sha256": digest, "parts": len(folders),
                           "architectures": [f"sm_{a}" for a in keep]}, indent=2)
    for folder in folders:
        (folder / MANIFEST).write_text(manifest)
    return folders


def assemble(source: Path, site: Path) -> Path:
    """Joins the parts under source, checks the archive's digest and unpacks it into site (once). Raises PackError
    naming what is missing or wrong."""
    if (site / "onnxruntime").exists():
        return site
    manifests = sorted(source.glob(f"p*/{MANIFEST}"))
    if not manifests:
        raise PackError(f"{source} holds no part of onnxruntime-gpu: carry each of .gpu-ort/p00, p01, ... first")
    manifest = json.loads(manifests[0].read_text())
    parts = [source / f"p{index:02d}" / f"{ARCHIVE}.{index:02d}" for index in range(manifest["parts"])]
    missing = [str(part.parent.relative_to(source.parent)) for part in parts if not part.exists()]
    if missing:
        raise PackError(f"onnxruntime-gpu lacks {', '.join(missing)}: carry each in a call of its own while the "
                        "machine stays warm")
    site.parent.mkdir(parents=True, exist_ok=True)
    joined = site.parent / ARCHIVE
    digest = hashlib.sha256()
    with joined.open("wb") as target:
        for part in parts:
            chunk = part.read_bytes()
            digest.update(chunk)
            target.write(chunk)
    if digest.hexdigest() != manifest["sha256"]:
        raise PackError(f"the joined parts' sha256 is {digest.hexdigest()}, not {manifest['sha256']}: parts from "
                        "two packings, or one cut short")
    staging = site.with_name(site.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    with tarfile.open(joined) as archive:
        archive.extractall(staging, filter="data")
    staging.rename(site)
    joined.unlink()
    return site


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", type=Path, help="an onnxruntime-gpu wheel already here (else downloaded)")
    options = parser.parse_args()
    folders = pack(PARTS, options.wheel or download_wheel())
    for folder in folders:
        size = sum(p.stat().st_size for p in folder.iterdir())
        print(f"{folder.relative_to(REPOSITORY_ROOT)}: {size / 2**20:.1f} MiB")
    print("on the lent machine, one call per part while it stays warm (carry names the part), then bench-gpu with "
          "--engine ort-cuda carrying .gpu: README, `make bench-gpu`, 'ONNX Runtime's CUDA provider in FP16'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
