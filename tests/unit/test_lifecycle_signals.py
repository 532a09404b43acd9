"""A service stops on SIGTERM also when it was started with SIGTERM blocked (blocked signals are inherited)."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


def test_a_service_started_with_sigterm_blocked_still_stops_on_sigterm():
    service = textwrap.dedent("""
        from services.common.lifecycle import run_until_signalled
        run_until_signalled(lambda: print("started", flush=True), lambda: print("stopped", flush=True),
                            lambda: True, lambda serving: None, check_interval_s=0.1)
    """)
    blocked = ("import os, signal, sys; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}); "
               "os.execv(sys.executable, sys.argv[1:])")
    process = subprocess.Popen([sys.executable, "-c", blocked, sys.executable, "-c", service], stdout=subprocess.PIPE,
                               text=True, cwd=REPOSITORY_ROOT, env={**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT)})
    try:
        assert process.stdout.readline().strip() == "started"
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert process.stdout.read().strip() == "stopped"
    finally:
        process.kill()
        process.wait(5)
