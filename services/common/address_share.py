"""At most so many of something at once per caller address (connections, waiting calls), thread-safe."""

from __future__ import annotations

import threading
from collections import Counter


class AddressShare:
    def __init__(self, per_address: int):
        self.per_address = per_address
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def enter(self, address: str) -> bool:
        """Counts one more for `address`; False (and nothing counted) when it already holds its share."""
        with self._lock:
            if self._held[address] >= self.per_address:
                return False
            self._held[address] += 1
            return True

    def leave(self, address: str) -> None:
        with self._lock:
            self._held[address] -= 1
            if self._held[address] <= 0:
                del self._held[address]
