"""JSON logs on stdout, one object per line, with whatever `extra` fields (listing_id, ...) a call passes."""

from __future__ import annotations

import json
import logging
import sys
import time

from services.common.tracing import current_trace_id

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace_id = current_trace_id()
        if trace_id:
            entry["trace_id"] = trace_id
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class OncePerInterval(logging.Filter):
    """Lets a logger's message through once per interval per (logger, message with its numbers dropped): while the
    broker is unreachable the Kafka client logs every reconnection attempt of every connection, thousands a second."""

    def __init__(self, interval_s: float = 10.0):
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        key = (record.name, "".join(c for c in message if not c.isdigit())[:120])
        now = time.monotonic()
        if now - self._last.get(key, float("-inf")) < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            record.suppressed_since_last = suppressed
        if len(self._last) > 10_000:  # bounded, whatever the messages
            self._last.clear()
        return True


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    kafka_client = logging.getLogger("kafka")
    kafka_client.setLevel(logging.WARNING)
    # Filters on a logger do not apply to its children's records, so the filter sits on the handler, for them only.
    once = OncePerInterval()
    handler.addFilter(lambda record: not record.name.startswith("kafka") or once.filter(record))
