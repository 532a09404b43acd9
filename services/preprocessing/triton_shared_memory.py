"""Requests' tensors through system shared memory, for a preprocessing worker on Triton's own host (a sidecar).

Over gRPC every batch is copied into a protobuf message, sent, parsed and copied again on both sides: a batch of 32
photos padded to the longest is tens of megabytes, and the thumbnails come back the same way. Measured with the
decode stand-in on the 2-core machine: 1.4 to 1.6 CPU-ms per photo in the worker and 1.4 to 1.7 in Triton over gRPC,
0.06 and 1.0 with both ways in shared memory. A worker beside Triton (the same pod, or `ipc: service:triton` in
compose) writes the batch into a region both processes map and the request carries only its name and offset.

Each region is a POSIX shared-memory object (/dev/shm) created by this process, held under an exclusive flock for its
whole life, and registered with Triton under the same name. A killed worker cannot unregister its regions and Triton
keeps them mapped, so every worker starting on the host unregisters the regions with this prefix whose object is gone
or whose lock is free: their owner is dead. A region is used by one call at a time; the pool holds at most
`max_regions`, each at most `max_region_bytes`, and a call that fits none goes over gRPC.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path

import numpy as np
from tritonclient.utils import InferenceServerException

log = logging.getLogger(__name__)

REGION_PREFIX = "product-classification-preprocessing-"
SHM_DIRECTORY = Path("/dev/shm")
ALIGNMENT = 64  # every tensor starts on a cache line, so numpy views of float32 and int32 are aligned
GROWTH = 1.25  # a region replaced by a larger one gets this much room beyond the call that needed it


def aligned(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT


@dataclass
class Region:
    """One registered region: its name (Triton's and the shared-memory object's), size and mapping."""

    name: str
    byte_size: int
    memory: shared_memory.SharedMemory
    lock_fd: int
    usable: bool = field(default=True)  # False once a call through it failed: it is destroyed, not reused

    def view(self, dtype, shape, offset: int) -> np.ndarray:
        """A numpy array over the region's bytes at offset (no copy)."""
        count = int(np.prod(shape)) if shape else 1
        return np.ndarray(shape, dtype, buffer=self.memory.buf, offset=offset) if count else np.zeros(shape, dtype)


class SharedMemoryPool:
    """Regions registered with one Triton, checked out one call at a time. `client` is tritonclient's gRPC client."""

    def __init__(self, client, max_regions: int = 4, max_region_bytes: int = 256 * 1024 * 1024,
                 prefix: str = REGION_PREFIX):
        self.client = client
        self.max_regions = max_regions
        self.max_region_bytes = max_region_bytes
        self.prefix = prefix
        self._free: list[Region] = []
        self._count = 0
        self._lock = threading.Lock()
        # Off for good once Triton could not map a region of ours: it runs on another host (or another /dev/shm).
        self.disabled_reason = ""

    def start(self) -> None:
        self.remove_stale_regions()

    def stop(self) -> None:
        with self._lock:
            regions, self._free = self._free, []
            self._count -= len(regions)
        for region in regions:
            self._destroy(region)

    # -- checkout

    @contextlib.contextmanager
    def region(self, byte_size: int) -> Iterator[Region | None]:
        """A region of at least byte_size for one call, or None (the call goes over gRPC): too large, every region
        busy, /dev/shm full, or Triton unable to map ours. A region whose call raised is destroyed, not reused."""
        region = self._checkout(byte_size)
        try:
            yield region
        except BaseException:
            if region is not None:  # Triton may still read or write it for the call that failed (a timeout)
                region.usable = False
            raise
        finally:
            if region is not None:
                self._give_back(region)

    def _checkout(self, byte_size: int) -> Region | None:
        if self.disabled_reason or byte_size > self.max_region_bytes:
            return None
        with self._lock:
            fitting = [r for r in self._free if r.byte_size >= byte_size]
            if fitting:
                chosen = min(fitting, key=lambda r: r.byte_size)
                self._free.remove(chosen)
                return chosen
            replaced = max(self._free, key=lambda r: r.byte_size) if self._free else None
            if replaced is not None:
                self._free.remove(replaced)
            elif self._count >= self.max_regions:
                return None
            else:
                self._count += 1
        if replaced is not None:
            self._destroy(replaced)
        mebibyte = 1024 * 1024
        region = self._create(min(self.max_region_bytes, -(-int(byte_size * GROWTH) // mebibyte) * mebibyte))
        if region is None:
            with self._lock:
                self._count -= 1
        return region

    def _give_back(self, region: Region) -> None:
        if region.usable:
            with self._lock:
                self._free.append(region)
            return
        with self._lock:
            self._count -= 1
        self._destroy(region)

    # -- one region's life

    def _create(self, byte_size: int) -> Region | None:
        name = f"{self.prefix}{uuid.uuid4().hex}"
        try:
            memory = shared_memory.SharedMemory(name, create=True, size=byte_size)
        except OSError as error:
            log.warning("no shared-memory region for Triton: this call goes over gRPC",
                        extra={"reason": repr(error), "bytes": byte_size})
            return None
        # Python's resource tracker would unlink the object when this process exits; the pool does that itself.
        _forget(memory)
        lock_fd = -1
        try:
            # tmpfs pages are only taken when first written: a full /dev/shm would then kill the process with
            # SIGBUS. Reserving them now turns that into an error here.
            os.posix_fallocate(memory._fd, 0, byte_size)  # noqa: SLF001  (the object's own descriptor)
            lock_fd = os.open(SHM_DIRECTORY / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while this process lives: it is alive
        except OSError as error:
            log.warning("no shared-memory region for Triton: this call goes over gRPC",
                        extra={"reason": repr(error), "bytes": byte_size})
            _close(memory, lock_fd, unlink=True)
            return None
        try:
            self.client.register_system_shared_memory(name, f"/{name}", byte_size)
        except InferenceServerException as error:
            _close(memory, lock_fd, unlink=True)
            if (error.status() or "").upper().endswith("UNAVAILABLE"):
                return None  # Triton down: the call will say so
            self.disabled_reason = f"Triton cannot map this host's shared memory: {error.message()}"[:300]
            log.warning("requests go to Triton over gRPC: it cannot map this host's shared memory (on another host, "
                        "or another /dev/shm?)", extra={"reason": self.disabled_reason})
            return None
        return Region(name, byte_size, memory, lock_fd)

    def _destroy(self, region: Region) -> None:
        with contextlib.suppress(InferenceServerException):  # Triton restarted, or unreachable: nothing to undo there
            self.client.unregister_system_shared_memory(region.name)
        _close(region.memory, region.lock_fd, unlink=True)

    # -- what dead workers left

    def remove_stale_regions(self) -> list[str]:
        """Unregisters from Triton every region with this prefix whose owner is dead (its object gone, or its lock
        free) and removes the object; returns their names. Regions of live workers are left alone."""
        try:
            status = self.client.get_system_shared_memory_status(as_json=True)
        except InferenceServerException as error:
            log.warning("could not list Triton's shared-memory regions", extra={"reason": error.message()})
            return []
        regions = status.get("regions", {})
        entries = regions.values() if isinstance(regions, dict) else regions
        removed = []
        for entry in entries:
            name = entry.get("name", "")
            if name.startswith(self.prefix) and self._owner_is_dead(name):
                with contextlib.suppress(InferenceServerException):
                    self.client.unregister_system_shared_memory(name)
                (SHM_DIRECTORY / name).unlink(missing_ok=True)
                removed.append(name)
        if removed:
            log.warning("unregistered shared-memory regions that dead workers left in Triton",
                        extra={"regions": len(removed)})
        return removed

    @staticmethod
    def _owner_is_dead(name: str) -> bool:
        try:
            # /dev/shm is writable by anyone on the host: never follow a link there, never block on a FIFO
            fd = os.open(SHM_DIRECTORY / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return True
        except OSError:
            return False  # not ours to judge (another user's object)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False  # not an object a pool made
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True  # nobody holds it: its owner is gone
        except OSError:  # held (BlockingIOError): its owner lives
            return False
        finally:
            os.close(fd)


def _forget(memory: shared_memory.SharedMemory) -> None:
    with contextlib.suppress(Exception):
        resource_tracker.unregister(memory._name, "shared_memory")  # noqa: SLF001  (the tracker's own key)


def _close(memory: shared_memory.SharedMemory, lock_fd: int, unlink: bool) -> None:
    with contextlib.suppress(Exception):
        memory.close()
    if unlink:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(SHM_DIRECTORY / memory.name)
    if lock_fd >= 0:
        with contextlib.suppress(OSError):
            os.close(lock_fd)
