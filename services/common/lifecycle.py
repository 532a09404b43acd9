"""Runs a service until SIGTERM or SIGINT, keeps its health in step with its dependencies, then stops it in order."""

from __future__ import annotations

import logging
import resource
import signal
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def raise_open_files_limit() -> int:
    """Raises this process's soft limit on open files to its hard limit, and returns it.

    Every connection a server accepts holds a descriptor until it closes, and a connection opened and left silent
    holds one until the handshake deadline closes it (10 s on the gRPC ports). Under the soft limit most systems
    start processes with (1,024), 1,100 idle sockets from one caller stopped the gateway accepting anyone; the hard
    limit (a container's is usually 1,048,576) is what the platform allows, so the soft one is raised to it, as
    Go's runtime and nginx's worker_rlimit_nofile do. A limit that cannot be raised is left as it is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or (hard != resource.RLIM_INFINITY and soft >= hard):
        return soft  # nothing to raise (an unlimited soft limit must not be lowered to a number)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError) as error:
        log.warning("could not raise the open-files limit", extra={"soft": soft, "hard": hard, "reason": repr(error)})
        return soft
    return wanted


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
    # A process inherits its parent's blocked signals: one started by a thread that blocked SIGTERM would never see it
    # (the orchestrator would wait out its grace period and kill it mid-batch). Before start(): its threads inherit it.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    log.info("open-files limit", extra={"limit": raise_open_files_limit()})
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
