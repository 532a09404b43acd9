"""The local Triton's backend folder is written again at every start, also while a killed Triton's stubs are still
exiting (a chaos test's restart under load failed on that with 'Text file busy')."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from services.localstack.triton_cpu import _replace_with_copy


def test_a_running_executable_is_replaced_not_written_over(tmp_path):
    sleeper = shutil.which("sleep")
    target = tmp_path / "triton_python_backend_stub"
    shutil.copy(sleeper, target)
    running = subprocess.Popen([str(target), "30"])
    try:
        with pytest.raises(OSError, match="Text file busy"):
            shutil.copy(sleeper, target)  # what the start did before
        _replace_with_copy(sleeper, target)
        assert target.read_bytes() == open(sleeper, "rb").read() and running.poll() is None
        assert [p.name for p in tmp_path.iterdir()] == [target.name]  # nothing staged left behind
    finally:
        running.kill()
        running.wait(10)
