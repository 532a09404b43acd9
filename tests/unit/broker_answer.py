"""The seam the result service's publishers wait on: the broker's answer to one send (a future's get)."""

from __future__ import annotations


class Sent:
    """Acknowledged, or refused with error when one is given."""

    def __init__(self, error: Exception | None = None):
        self.error = error

    def get(self, timeout):
        if self.error:
            raise self.error
