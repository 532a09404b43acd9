"""The shared-memory pool's own rules, with Triton's client faked at its seam (the real Triton is in
tests/integration/test_triton_shared_memory.py): one call per region, a bounded pool, regions replaced by larger
ones, a region whose call failed never reused, and dead owners told from live ones by their lock."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tritonclient.utils import InferenceServerException

from services.preprocessing.triton_shared_memory import SHM_DIRECTORY, SharedMemoryPool

PREFIX = "test-pool-"


class FakeClient:
    """Triton's shared-memory API as far as the pool uses it: registered regions by name."""

    def __init__(self, refuse: InferenceServerException | None = None):
        self.refuse = refuse
        self.registered: dict[str, tuple[str, int]] = {}

    def register_system_shared_memory(self, name, key, byte_size):
        if self.refuse:
            raise self.refuse
        assert (SHM_DIRECTORY / key.lstrip("/")).stat().st_size >= byte_size
        self.registered[name] = (key, byte_size)

    def unregister_system_shared_memory(self, name=""):
        self.registered.pop(name, None)

    def get_system_shared_memory_status(self, as_json=False):
        return {"regions": {name: {"name": name, "key": key, "byte_size": str(size)}
                            for name, (key, size) in self.registered.items()}}


@pytest.fixture
def pool():
    made = SharedMemoryPool(FakeClient(), max_regions=2, max_region_bytes=8 * 1024 * 1024, prefix=PREFIX)
    made.start()
    yield made
    made.stop()
    assert made.client.registered == {}
    assert not list(SHM_DIRECTORY.glob(f"{PREFIX}*"))


def test_a_region_is_reused_by_the_next_call_and_each_concurrent_call_gets_its_own(pool):
    with pool.region(1000) as first:
        first.view("uint8", (1000,), 0)[:] = 7
        with pool.region(1000) as second:
            assert second.name != first.name
            with pool.region(1000) as third:
                assert third is None  # every region busy and the pool full: this call goes over gRPC
    with pool.region(500) as again:
        assert again.name in (first.name, second.name)
    assert len(pool.client.registered) == 2


def test_a_call_larger_than_every_free_region_replaces_one_and_one_over_the_limit_goes_over_grpc(pool):
    with pool.region(1000) as small:
        pass
    with pool.region(3 * 1024 * 1024) as large:
        assert large.byte_size >= 3 * 1024 * 1024
    assert set(pool.client.registered) == {large.name}  # the small one was unregistered and removed
    assert not (SHM_DIRECTORY / small.name).exists()
    with pool.region(9 * 1024 * 1024) as too_large:
        assert too_large is None


def test_a_region_whose_call_failed_is_destroyed_not_reused(pool):
    """Triton may still read or write it for the call that failed (a timeout), so the next call gets another."""
    with pytest.raises(RuntimeError):
        with pool.region(1000) as failed:
            raise RuntimeError("deadline exceeded")
    assert failed.name not in pool.client.registered and not (SHM_DIRECTORY / failed.name).exists()
    with pool.region(1000) as next_one:
        assert next_one.name != failed.name


def test_triton_unable_to_map_our_regions_turns_the_pool_off_and_removes_what_it_made():
    refusal = InferenceServerException("Unable to open shared memory region", status="StatusCode.INVALID_ARGUMENT")
    pool = SharedMemoryPool(FakeClient(refuse=refusal), prefix=PREFIX)
    with pool.region(1000) as region:
        assert region is None
    assert "cannot map" in pool.disabled_reason
    with pool.region(1000) as region:
        assert region is None
    assert not list(SHM_DIRECTORY.glob(f"{PREFIX}*"))


def test_triton_down_is_not_taken_for_triton_elsewhere():
    down = InferenceServerException("failed to connect", status="StatusCode.UNAVAILABLE")
    pool = SharedMemoryPool(FakeClient(refuse=down), prefix=PREFIX)
    with pool.region(1000) as region:
        assert region is None
    assert pool.disabled_reason == ""


def test_a_dead_owners_regions_are_removed_and_a_live_ones_kept(pool, tmp_path):
    """Another process makes a region (registered, locked) and is killed: the next pool to start removes it. A live
    process's region, and this pool's own, stay."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path.cwd())!r})
        from tests.unit.test_triton_shared_memory_pool import FakeClient
        from services.preprocessing.triton_shared_memory import SharedMemoryPool
        pool = SharedMemoryPool(FakeClient(), prefix={PREFIX!r})
        with pool.region(1000) as region:
            print(region.name, flush=True)
            time.sleep(600)
    """)
    owners = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        names = [owner.stdout.readline().strip() for owner in owners]
        dead, live = names
        owners[0].kill()
        owners[0].wait(10)
        with pool.region(1000) as own:
            pass
        for name in names:  # as Triton would list them (the fake client stands for one Triton)
            pool.client.registered[name] = (f"/{name}", 1000)
        assert pool.remove_stale_regions() == [dead]
        assert set(pool.client.registered) == {live, own.name}
        assert not (SHM_DIRECTORY / dead).exists() and (SHM_DIRECTORY / live).exists()
        owners[1].kill()
        owners[1].wait(10)
        (SHM_DIRECTORY / live).unlink()  # its object gone as well (removed by hand): still Triton's to forget
        assert pool.remove_stale_regions() == [live]
        assert set(pool.client.registered) == {own.name}
    finally:
        for owner in owners:
            owner.kill()
            owner.wait(10)
        for name in SHM_DIRECTORY.glob(f"{PREFIX}*"):
            if name.name != own.name:
                name.unlink()


def test_what_someone_else_put_in_dev_shm_under_the_prefix_is_left_alone_without_blocking(pool, tmp_path):
    """/dev/shm is writable by anyone on the host: a FIFO (opening one could block) or a link under a registered
    name of the prefix is neither followed nor removed, and the start goes on."""
    fifo, link = SHM_DIRECTORY / f"{PREFIX}fifo", SHM_DIRECTORY / f"{PREFIX}link"
    target = tmp_path / "target"
    target.write_bytes(b"x")
    os.mkfifo(fifo)
    link.symlink_to(target)
    try:
        for path in (fifo, link):
            pool.client.registered[path.name] = (f"/{path.name}", 1)
        assert pool.remove_stale_regions() == []
        assert fifo.exists() and link.is_symlink() and target.exists()
    finally:
        fifo.unlink()
        link.unlink()
        for path in (fifo, link):
            pool.client.registered.pop(path.name, None)
