"""The local stack cleans up after itself, also when a part fails to start."""

import shutil

import pytest

from services.localstack.processes import StartupError
from services.localstack.stack import REPOSITORY_ROOT, LocalStack, StackOptions


def test_a_failed_start_stops_what_already_started(tmp_path):
    repository = tmp_path / "models"
    (repository / "resnet50").mkdir(parents=True)
    shutil.copy(REPOSITORY_ROOT / "triton_models" / "resnet50" / "config.pbtxt", repository / "resnet50")
    stack = LocalStack(StackOptions(work_dir=tmp_path / "run", model_repository=repository))
    with pytest.raises(StartupError, match="no model version"):
        stack.start()
    assert stack.broker._process is not None and not stack.broker._process.running()
