"""The benchmarks' CPU time of a process tree keeps what a child spent after the child has ended."""

import subprocess
import sys

from services.drivers.benchmarks.pipeline_runs import process_tree_cpu_s


def test_a_child_that_ended_still_counts_in_its_parents_tree():
    busy = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys, time\n"
                               f"subprocess.run([sys.executable, '-c', {busy!r}])\n"
                               "print('child done', flush=True)\n"
                               "time.sleep(30)\n"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "child done"
        assert process_tree_cpu_s(parent.pid) >= 0.3
    finally:
        parent.kill()
        parent.wait()
