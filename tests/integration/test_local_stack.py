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


@pytest.mark.parametrize("how", ["as started", "started with SIGTERM blocked", "received by another thread"])
def test_sigterm_to_the_process_running_a_stack_stops_every_part_of_it(tmp_path, how):
    """A demo or a benchmark ended with SIGTERM (a process manager, `timeout`) stops its broker, Triton and services
    as Ctrl-C does, instead of leaving them running. Also when it was started with SIGTERM blocked (blocked signals are
    inherited: it held SIGTERM pending), and when the kernel hands the signal to a thread other than the main one (a
    gRPC or Kafka client's: the main thread slept on, the handler never ran; seen in a fresh clone's run)."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    script = textwrap.dedent(f"""
        import json, threading, time
        from pathlib import Path
        from services.localstack.stack import LocalStack, StackOptions
        stack = LocalStack(StackOptions(work_dir=Path({str(tmp_path / "run")!r})))
        stack.start()
        try:
            parts = [stack.broker._process, stack.triton._process] + [s.process for s in stack.services.values()]
            helper = threading.Thread(target=time.sleep, args=(600,), daemon=True)
            helper.start()
            print(json.dumps([part.process.pid for part in parts] + [helper.native_id]), flush=True)
            time.sleep(600)
        finally:
            stack.stop()
    """)
    command = [sys.executable, "-c", script]
    if how == "started with SIGTERM blocked":  # blocked signals survive exec: the script starts with SIGTERM blocked
        command = [sys.executable, "-c", "import os, signal, sys; signal.pthread_sigmask(signal.SIG_BLOCK, "
                   "{signal.SIGTERM}); os.execv(sys.executable, sys.argv[1:])", *command]
    runner = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPOSITORY_ROOT,
                              env={**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT)})
    pids: list[int] = []
    try:
        *pids, helper_thread = json.loads(runner.stdout.readline())
        assert len(pids) == 5
        # kill() naming a thread's id offers the signal to that thread first
        os.kill(helper_thread if how == "received by another thread" else runner.pid, signal.SIGTERM)
        assert runner.wait(90) == -signal.SIGINT  # it ended as Ctrl-C ends it, its finally run
        deadline = time.monotonic() + 10
        alive = pids
        while alive and time.monotonic() < deadline:
            alive = [pid for pid in pids if _running(pid)]
            time.sleep(0.2)
        assert alive == [], f"left running: {alive}"
    finally:
        runner.kill()
        runner.wait(10)
        for pid in pids:  # a failed run leaves nothing behind for the tests after it
            if _running(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)  # each part leads its own process group
                except ProcessLookupError:
                    pass


def _running(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent counts as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
