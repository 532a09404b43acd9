"""onnxruntime-gpu's trip to a lent GPU machine (drivers/benchmarks/gpu_host/ort_gpu.py): the kernels for other GPUs are
zeroed in place (every header, offset and size kept), the package travels in parts that join to the digest packed,
and a missing or foreign part is named, never unpacked."""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest

from services.drivers.benchmarks.gpu_host.ort_gpu import (FATBIN_MAGIC, MANIFEST, PackError, assemble, elf_section,
                                          keep_architectures, pack)


def entry(architecture: int, payload: bytes) -> bytes:
    """A fatbinary entry: kind, version, header size, payload size, ..., the architecture at byte 28."""
    header = bytearray(64)
    struct.pack_into("<HHII", header, 0, 2, 0x101, len(header), len(payload))
    struct.pack_into("<I", header, 28, architecture)
    return bytes(header) + payload


def container(*entries: bytes) -> bytes:
    body = b"".join(entries)
    return struct.pack("<IHHQ", FATBIN_MAGIC, 1, 16, len(body)) + body


def test_only_the_kept_architectures_keep_their_kernels_and_nothing_moves():
    kernels = {80: b"\x11" * 40, 90: b"\x22" * 24, 120: b"\x33" * 16}
    section = bytearray(container(entry(80, kernels[80]), entry(90, kernels[90])) + bytes(8)  # padding between
                        + container(entry(120, kernels[120]), entry(90, b"\x44" * 8)))
    before = bytes(section)
    assert keep_architectures(memoryview(section), (90,)) == (32, 56)
    assert len(section) == len(before)
    assert bytes(section).count(b"\x22" * 24) == 1 and bytes(section).count(b"\x44" * 8) == 1
    assert b"\x11" not in section and b"\x33" not in section
    differing = [i for i, (a, b) in enumerate(zip(section, before)) if a != b]
    payloads = {before.index(kernels[80]) + i for i in range(40)} | {before.index(kernels[120]) + i for i in range(16)}
    assert set(differing) == payloads  # headers untouched


def test_a_library_without_kernels_for_the_lent_gpus_or_with_a_broken_fatbinary_is_refused():
    with pytest.raises(PackError, match="no kernels"):
        keep_architectures(memoryview(bytearray(container(entry(80, b"\x11" * 8)))), (90,))
    broken = bytearray(container(entry(90, b"\x22" * 8)))
    struct.pack_into("<I", broken, 16 + 8, 4096)  # the entry claims more payload than its container holds
    with pytest.raises(PackError, match="malformed"):
        keep_architectures(memoryview(broken), (90,))


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils' readelf is the reference")
def test_sections_are_found_where_readelf_finds_them():
    binary = Path(shutil.which("ls")).resolve()
    listing = subprocess.run(["readelf", "-SW", str(binary)], capture_output=True, text=True, check=True).stdout
    line = next(line for line in listing.splitlines() if " .text " in line)
    fields = line.split("]", 1)[1].split()
    assert elf_section(binary.read_bytes(), ".text") == (int(fields[3], 16), int(fields[4], 16))
    with pytest.raises(PackError, match="no .nv_fatbin"):
        elf_section(binary.read_bytes(), ".nv_fatbin")


def fake_wheel(path: Path) -> dict[str, bytes]:
    files = {"onnxruntime/__init__.py": b"__version__ = 'test'\n",
             "onnxruntime/capi/data.bin": random.Random(0).randbytes(3000),  # does not compress
             "onnxruntime_gpu-1.31.1.dist-info/METADATA": b"Name: onnxruntime-gpu\n"}
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
    return files


def test_the_parts_join_to_the_package_packed(tmp_path):
    files = fake_wheel(tmp_path / "ort.whl")
    folders = pack(tmp_path / ".gpu-ort", tmp_path / "ort.whl", part_bytes=700)
    assert len(folders) >= 2 and all((folder / MANIFEST).exists() for folder in folders)
    assert all(sum(p.stat().st_size for p in folder.iterdir() if p.name != MANIFEST) <= 700 for folder in folders)
    site = assemble(tmp_path / ".gpu-ort", tmp_path / "work" / "ort-site")
    for name, data in files.items():
        assert (site / name).read_bytes() == data
    assert assemble(tmp_path / ".gpu-ort", site) == site  # unpacked once


def test_a_missing_or_foreign_part_is_named_and_nothing_is_unpacked(tmp_path):
    fake_wheel(tmp_path / "ort.whl")
    folders = pack(tmp_path / ".gpu-ort", tmp_path / "ort.whl", part_bytes=700)
    with pytest.raises(PackError, match="holds no part"):
        assemble(tmp_path / "elsewhere", tmp_path / "site-a")
    shutil.move(folders[1], tmp_path / "held-back")
    with pytest.raises(PackError, match=r"lacks \.gpu-ort/p01"):
        assemble(tmp_path / ".gpu-ort", tmp_path / "site-b")
    shutil.move(tmp_path / "held-back", folders[1])
    part = next(p for p in folders[1].iterdir() if p.name != MANIFEST)
    part.write_bytes(part.read_bytes()[:-1] + b"?")
    with pytest.raises(PackError, match="sha256"):
        assemble(tmp_path / ".gpu-ort", tmp_path / "site-c")
    assert not any((tmp_path / name).exists() for name in ("site-a", "site-b", "site-c"))
