"""The tools people use: classify-image against the running gateway, and `make up` started and stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from services.localstack.stack import REPOSITORY_ROOT
from services.trainer.real_models import clothing_dataset

KNOWN = [line.split() for line in (Path(__file__).with_name("known_photos.txt").read_text().splitlines())
         if line.strip() and not line.startswith("#")]
TOOL = str(Path(sys.executable).with_name("classify-image"))


def run_tool(stack, *args, api_key=None):
    env = {**os.environ, "PRODUCT_CLASSIFICATION_GATEWAY": stack.services["gateway"].address,
           "PRODUCT_CLASSIFICATION_API_KEY": api_key or stack.gateway_api_key}
    return subprocess.run([TOOL, *args], capture_output=True, text=True, timeout=120, env=env, cwd="/")


def test_classify_image_prints_the_category_in_the_locale(stack, tmp_path):
    shoes = next(photo for photo, label in KNOWN if label == "shoes")
    run = run_tool(stack, str(clothing_dataset() / "validation" / shoes), "--marketplace", "br-loja", "--locale",
                   "pt-BR", "--json")
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout.strip())
    assert answer["category_id"] == "gid://shopify/TaxonomyCategory/aa-8" and answer["category"] == "Sapatos"
    assert answer["locale"] == "pt-BR" and answer["status"] == "CLASSIFIED" and answer["candidates"]
    plain = run_tool(stack, str(clothing_dataset() / "validation" / shoes), "--marketplace", "de-modehaus")
    assert plain.returncode == 0 and "Schuhe [de]" in plain.stdout


def test_classify_image_errors_are_one_line_each_never_a_traceback(stack, tmp_path):
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_bytes(b"just some text, not a photo")
    run = run_tool(stack, str(not_an_image), str(tmp_path / "missing.jpg"), "ftp://example.com/x.jpg")
    lines = run.stdout.strip().splitlines()
    assert run.returncode == 1 and "Traceback" not in run.stdout + run.stderr
    assert len(lines) == 3
    assert "INVALID_IMAGE: the image cannot be decoded" in lines[0]
    assert "UNREADABLE_FILE" in lines[1] and "INVALID_REQUEST" in lines[2]
    wrong_key = run_tool(stack, str(not_an_image), api_key="wrong-wrong-wrong-wrong")
    assert wrong_key.returncode == 1 and "UNAUTHENTICATED: the API key is not valid" in wrong_key.stdout


def test_make_up_prints_where_everything_is_and_stops_cleanly():
    process = subprocess.Popen([sys.executable, "-m", "services.drivers.up"], cwd=REPOSITORY_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not any("Ctrl-C stops everything" in line for line in lines):
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
        output = "".join(lines)
        assert "gateway (gRPC, ListingClassifier)" in output and "gateway API key" in output, output
        up = REPOSITORY_ROOT / ".run" / "up"
        for name in ("gateway-api-key", "console-password", "results-api-key", "triton-access-token"):
            assert oct((up / name).stat().st_mode & 0o777) == "0o600" and len((up / name).read_text().strip()) >= 16
        console_url = (up / "console-url").read_text().strip()
        assert f"review console (web)               {console_url}" in output
        with urllib.request.urlopen(console_url + "/login", timeout=10) as page:  # the console answers
            assert page.status == 200 and b"Sign in" in page.read()
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        rest = process.stdout.read()
        assert "stopped" in rest
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    triton_left = subprocess.run(["pgrep", "-f", str(REPOSITORY_ROOT / ".run" / "up" / "stack")], capture_output=True)
    assert triton_left.stdout.strip() == b"", "make up left processes behind"
