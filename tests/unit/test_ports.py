"""The local stack's ports: two processes on one machine never hand out the same one."""

from __future__ import annotations

import fcntl
import os
import random
import socket
import subprocess
import sys
import textwrap

import pytest

from services.localstack import processes

HOLDER = textwrap.dedent("""
    import sys
    from services.localstack.processes import free_port
    print(" ".join(str(free_port()) for _ in range(int(sys.argv[1]))), flush=True)
    sys.stdin.read()  # holds its ports until told to end
""")


def all_free(ports) -> bool:
    """Nothing listens on these ports, and no process (this one included: its stacks' ports stay locked while they
    live) holds their locks."""
    processes._PORT_LOCKS.mkdir(mode=0o777, exist_ok=True)
    for port in ports:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
        descriptor = os.open(processes._PORT_LOCKS / f"{port}.lock", os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        finally:
            os.close(descriptor)  # closing the only descriptor releases the lock
    return True


@pytest.fixture
def narrow_range(monkeypatch):
    """Eight ports only, so a collision would be certain if ports were not reserved across processes."""
    base = next(b for b in iter(lambda: random.randrange(20000, 29000), None) if all_free(range(b, b + 8)))
    monkeypatch.setenv("LOCALSTACK_PORT_RANGE", f"{base}-{base + 7}")
    held: dict[int, int] = {}
    monkeypatch.setattr(processes, "_held_ports", held)
    yield base
    for descriptor in held.values():  # what this test took, given back
        os.close(descriptor)


def test_a_port_held_by_another_process_is_never_handed_out(narrow_range, monkeypatch):
    other = subprocess.Popen([sys.executable, "-c", HOLDER, "5"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, )
    try:
        theirs = {int(p) for p in other.stdout.readline().split()}
        assert len(theirs) == 5
        ours = {processes.free_port() for _ in range(3)}
        assert len(ours) == 3 and not ours & theirs
        assert all(narrow_range <= port <= narrow_range + 7 for port in ours | theirs)
        with pytest.raises(processes.StartupError, match="no free port"):
            processes.free_port()
    finally:
        other.stdin.close()
        other.wait(10)
    # the other process has ended: the kernel released its locks, so its ports can be had again
    for port in theirs:
        assert processes.free_port() in theirs


def test_a_port_something_else_listens_on_is_skipped(narrow_range):
    listeners = []
    try:
        for port in range(narrow_range, narrow_range + 7):  # all but one taken by a program that does not lock
            listener = socket.socket()
            listener.bind(("127.0.0.1", port))
            listener.listen()
            listeners.append(listener)
        assert processes.free_port() == narrow_range + 7
    finally:
        for listener in listeners:
            listener.close()


def test_ports_come_from_below_the_ephemeral_range(monkeypatch):
    monkeypatch.delenv("LOCALSTACK_PORT_RANGE", raising=False)
    low, high = processes._port_range()
    ephemeral_low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    assert low >= 1024 and high < ephemeral_low
