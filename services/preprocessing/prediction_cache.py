"""What the models answered for photos seen before, so a photo sent again costs its digest, not its decoding.

Marketplaces send the same photo again and again: a listing edited for its price or title comes back with its photo
unchanged, and a cross-border seller lists one product, with one photo, on several marketplaces. The models' answer
for a photo depends only on its bytes and on the models' versions, so it is kept under both: the SHA-256 of the bytes
(the digest the idempotency key already holds) and every called model's name and version. A model reloaded at a new
version changes the key, so nothing it did not answer is ever named by it.

Bounded by bytes (the console's thumbnail is most of an entry: about 10 KB against 80 bytes of probabilities), the
least recently used first out; one lock, held only to look up or store an entry. Only answers are kept: a refused
photo is refused again at its own cost.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

# What an entry costs beyond its arrays and thumbnail: the key's strings, the dict and the tuples around them.
ENTRY_OVERHEAD_BYTES = 400


@dataclass(frozen=True)
class RememberedPrediction:
    """A photo's answer from an earlier batch: each model's probabilities and the console's thumbnail."""
    digest: str
    probabilities: dict[str, np.ndarray]  # model name -> (classes,) float32, read-only
    thumbnail_jpeg: bytes

    @property
    def size_bytes(self) -> int:
        return (ENTRY_OVERHEAD_BYTES + len(self.digest) + len(self.thumbnail_jpeg)
                + sum(p.nbytes for p in self.probabilities.values()))


class PredictionCache:
    """Answers by (photo digest, the called models' versions), at most max_bytes of them; thread-safe."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, tuple[str, ...]], RememberedPrediction] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: str, versions: tuple[str, ...]) -> RememberedPrediction | None:
        with self._lock:
            entry = self._entries.get((digest, versions))
            if entry is not None:
                self._entries.move_to_end((digest, versions))
            return entry

    def put(self, digest: str, versions: tuple[str, ...], probabilities: dict[str, np.ndarray],
            thumbnail_jpeg: bytes) -> None:
        """Keeps a copy of the answer (the caller's rows belong to a batch); one larger than the whole bound is not
        kept."""
        kept = {}
        for name, row in probabilities.items():
            copy = np.array(row, dtype=np.float32)
            copy.setflags(write=False)
            kept[name] = copy
        entry = RememberedPrediction(digest, kept, thumbnail_jpeg)
        if entry.size_bytes > self.max_bytes:
            return
        with self._lock:
            previous = self._entries.pop((digest, versions), None)
            if previous is not None:
                self._bytes -= previous.size_bytes
            self._entries[(digest, versions)] = entry
            self._bytes += entry.size_bytes
            while self._bytes > self.max_bytes:
                _, oldest = self._entries.popitem(last=False)
                self._bytes -= oldest.size_bytes
