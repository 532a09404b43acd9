"""Runs a service until SIGTERM or SIGINT, keeps its health in step with its dependencies, then stops it in order."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def run_until_signalled(start: Callable[[], None], stop: Callable[[], None], ready: Callable[[], bool],
                        set_serving: Callable[[bool], None], check_interval_s: float = 1.0) -> None:
    """start(), then report ready() through set_serving every interval until a signal arrives, then stop()."""
    stopping = threading.Event()

    def request_stop(signum, _frame):
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    start()
    serving = None
    while not stopping.is_set():
        try:
            now_ready = bool(ready())
        except Exception:  # noqa: BLE001
            now_ready = False
        if now_ready != serving:
            set_serving(now_ready)
            log.info("serving" if now_ready else "not serving")
            serving = now_ready
        stopping.wait(check_interval_s)
    set_serving(False)
    stop()
    log.info("stopped")
