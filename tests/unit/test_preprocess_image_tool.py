"""The operator's tool, run as installed: one JSON line per input, the tensors or the error kind and reason."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import skimage

PHOTO = Path(skimage.__file__).parent / "data" / "rocket.jpg"


def run_tool(*arguments: str) -> tuple[int, list[dict]]:
    executable = shutil.which("preprocess-image", path=str(Path(sys.executable).parent))
    if executable is None:
        pytest.fail("preprocess-image is not installed with the project (pip install -e .)")
    result = subprocess.run([executable, *arguments], capture_output=True, text=True, timeout=60)
    return result.returncode, [json.loads(line) for line in result.stdout.splitlines()]


def test_tool_reports_tensors_and_errors(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(PHOTO.read_bytes()[:500])
    code, lines = run_tool(str(PHOTO), str(broken), "http://127.0.0.1:9/image.jpg", str(tmp_path / "missing.png"))
    assert code == 1
    good, bad, internal, missing = lines
    assert good["ok"] and good["tensors"]["224"]["shape"] == [224, 224, 3] and len(good["crop_box"]) == 4
    assert bad["error_kind"] == "INVALID_IMAGE" and "cannot be decoded" in bad["reason"]
    assert internal["error_kind"] == "INVALID_REQUEST" and "internal address" in internal["reason"]
    assert missing["error_kind"] == "UNREADABLE_FILE"


def test_tool_uses_the_service_limits_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PREPROCESSING_MAX_IMAGE_PIXELS", "1000")
    code, [line] = run_tool(str(PHOTO))
    assert code == 1 and line["error_kind"] == "IMAGE_TOO_LARGE"
