"""SigtermAsInterrupt leaves what others set up alone and puts back what it changed (each case in a fresh process:
a test session's own stacks hold SIGTERM)."""

import subprocess
import sys
import textwrap
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


def run(code: str) -> None:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPOSITORY_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_install_and_uninstall_restore_sigterm_and_the_wakeup_fd():
    run("""
        import signal, threading
        from services.localstack.termination import SigtermAsInterrupt
        sigterm = SigtermAsInterrupt()
        sigterm.install()
        assert sigterm.installed and signal.getsignal(signal.SIGTERM) == sigterm._terminated
        assert any(t.name == "sigterm-watch" for t in threading.enumerate())
        sigterm.uninstall()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and signal.set_wakeup_fd(-1) == -1
    """)


def test_what_someone_else_installed_is_left_alone():
    run("""
        import os, signal
        from services.localstack.termination import SigtermAsInterrupt
        def theirs(_signum, _frame):
            pass
        signal.signal(signal.SIGTERM, theirs)
        sigterm = SigtermAsInterrupt()
        sigterm.install()
        assert not sigterm.installed and signal.getsignal(signal.SIGTERM) is theirs
        sigterm.uninstall()
        assert signal.getsignal(signal.SIGTERM) is theirs
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd)  # an asyncio loop's, say
        sigterm.install()
        assert sigterm.installed and signal.set_wakeup_fd(write_fd) == write_fd  # theirs kept
        sigterm.uninstall()
        assert signal.set_wakeup_fd(-1) == write_fd
    """)
