"""SIGTERM to the process that runs a local stack (a demo, a benchmark, `make up`, a test session) ends it the way
Ctrl-C does: as KeyboardInterrupt in the main thread, so its `with` or `finally` stops the broker, Triton and the
services. By default the process ended at once and left them all running. A second SIGTERM ends it at once.

Python runs a handler in the main thread, once that thread runs again. The kernel may hand the signal to any thread
that does not block it (gRPC's, the Kafka clients'), and then a main thread asleep (time.sleep, a wait on a lock or a
process) is not woken: a test's runner slept on with the signal handled nowhere. So a watcher thread learns of each
signal through the wakeup fd and, while the handler has not run, sends SIGTERM to the main thread itself, once.
"""

from __future__ import annotations

import os
import signal
import threading


class SigtermAsInterrupt:
    """install() from the main thread, where nothing else handles SIGTERM (otherwise it does nothing); uninstall()
    puts SIGTERM back to its default and stops the watcher."""

    def __init__(self):
        self._lock = threading.Lock()
        self._installed = False
        self._nudged = False
        self._wakeup_fd = -1

    @property
    def installed(self) -> bool:
        return self._installed

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread() or \
                signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return
        signal.signal(signal.SIGTERM, self._terminated)
        # Blocked signals are inherited: a process started with SIGTERM blocked would hold it pending forever.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        self._installed, self._nudged = True, False
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        if previous != -1:  # someone else listens (an asyncio loop): theirs stays, and no watcher
            signal.set_wakeup_fd(previous)
            os.close(read_fd)
            os.close(write_fd)
            return
        self._wakeup_fd = write_fd
        threading.Thread(target=self._watch, args=(read_fd, threading.main_thread().ident), name="sigterm-watch",
                         daemon=True).start()

    def uninstall(self) -> None:
        with self._lock:
            if self._installed:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                self._installed = False
        if self._wakeup_fd == -1:
            return
        try:
            current = signal.set_wakeup_fd(-1)
        except ValueError:  # not the main thread: the fd stays registered, and open, while the process lives
            return
        if current != self._wakeup_fd:
            signal.set_wakeup_fd(current)  # replaced since by someone else's: theirs stays
        os.close(self._wakeup_fd)  # the watcher reads the end and closes its side
        self._wakeup_fd = -1

    def _terminated(self, _signum, _frame) -> None:
        with self._lock:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self._installed = False
        raise KeyboardInterrupt("SIGTERM")

    def _watch(self, read_fd: int, main_thread: int) -> None:
        try:
            while data := os.read(read_fd, 256):  # one byte per signal that has a Python handler, its number
                if signal.SIGTERM in data:
                    with self._lock:
                        if self._installed and not self._nudged:
                            self._nudged = True
                            signal.pthread_kill(main_thread, signal.SIGTERM)
        except OSError:
            pass
        finally:
            os.close(read_fd)
