"""Runs a service until SIGTERM or SIGINT, keeps its health in step with its dependencies, then stops it in order."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def run_until_signalled(start: Callable[[], None], stop: Callable[[], None], ready: Callable[[], bool],
                        set_serving: Callable[[bool], None], check_interval_s: float = 1.0,
                        fatal: threading.Event | None = None) -> None:
    """start(), then report ready() through set_serving every interval until a signal arrives, then stop().

    fatal: set by a part that cannot go on (a dead consume loop); health turns NOT_SERVING at once, the service
    stops, and the process exits with status 70 so the orchestrator restarts it.
    """
    stopping = threading.Event()
    fatal = fatal or threading.Event()

    def request_stop(signum, _frame):
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    start()
    serving = None
    while not stopping.is_set() and not fatal.is_set():
        try:
            now_ready = bool(ready())
        except Exception:  # noqa: BLE001
            now_ready = False
        if now_ready != serving:
            set_serving(now_ready)
            log.info("serving" if now_ready else "not serving")
            serving = now_ready
        _wait_either(stopping, fatal, check_interval_s)
    set_serving(False)
    stop()
    if fatal.is_set():
        log.critical("stopped after a fatal error; exiting with status 70")
        raise SystemExit(70)
    log.info("stopped")


def _wait_either(first: threading.Event, second: threading.Event, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not (first.is_set() or second.is_set()) and time.monotonic() < deadline:
        second.wait(min(0.05, max(0.0, deadline - time.monotonic())))
