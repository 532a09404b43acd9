"""The services' JSON logs: the Kafka client's repeated complaints are let through once per interval."""

from __future__ import annotations

import io
import json
import logging

from services.common import logs


def test_the_kafka_clients_flood_is_let_through_once_per_interval_and_the_services_own_lines_all(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(logs.sys, "stdout", stream)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure_logging("test")
        for attempt in range(500):  # one reconnection attempt after another, each with its own port number
            logging.getLogger("kafka.net.connection").error("Connection lost to 127.0.0.1:%d", 40000 + attempt)
        logging.getLogger("kafka.cluster").error("Metadata refresh: failed")
        for index in range(3):
            logging.getLogger("services.common.kafka").warning("batch failed %d", index)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [entry["logger"] for entry in lines] == ["kafka.net.connection", "kafka.cluster"] + \
        ["services.common.kafka"] * 3
