"""A handler error the loop cannot handle stops the process loudly instead of leaving a member that never consumes."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from services.common.errors import ClassificationError, ErrorKind
from services.common.kafka import ConsumeLoop
from services.common.lifecycle import run_until_signalled


class FakeConsumer:
    """The seam: one batch to poll, then nothing; records what was committed."""

    def __init__(self):
        self.batches = [{"tp": [SimpleNamespace(topic="t", partition=0, offset=7, key=b"k", value=b"v")]}]
        self.committed = []

    def subscribe(self, topics, listener=None):
        pass

    def poll(self, timeout_ms=0, max_records=None):
        if self.batches:
            return self.batches.pop()
        time.sleep(timeout_ms / 1000)
        return {}

    def commit(self, offsets):
        self.committed.append(offsets)

    def assignment(self):
        return set()

    def pause(self, *partitions):
        pass

    def resume(self, *partitions):
        pass

    def close(self, autocommit=False):
        pass


class FakeProducer:
    def flush(self, timeout=None):
        pass


@pytest.mark.parametrize("error", [RuntimeError("a bug in the handler"),
                                   ClassificationError(ErrorKind.INTERNAL, "an unexpected state")])
def test_an_unhandled_error_marks_the_loop_fatal_and_commits_nothing(error):
    def handler(records):
        raise error

    consumer = FakeConsumer()
    loop = ConsumeLoop("test", consumer, ["t"], handler, FakeProducer())
    loop.start()
    assert loop.fatal.wait(5), "the loop must report that it cannot go on"
    assert not loop.healthy.is_set() and consumer.committed == []
    assert str(error) in loop.fatal_reason
    loop.stop(5)


def test_a_fatal_part_stops_the_service_with_a_non_zero_exit():
    fatal = threading.Event()
    serving, stopped = [], []
    threading.Timer(0.3, fatal.set).start()
    with pytest.raises(SystemExit) as exited:
        run_until_signalled(lambda: None, lambda: stopped.append(True), lambda: True, serving.append,
                            check_interval_s=10.0, fatal=fatal)
    assert exited.value.code == 70 and stopped == [True]
    assert serving == [True, False]  # NOT_SERVING at once, without waiting out the check interval
