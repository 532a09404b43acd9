"""Relays between the stack and its broker: TcpLink, so a fault scenario can take the network away
(StackOptions.broker_link); TlsLink, the broker's TLS listener (StackOptions.tls).

The broker advertises the relay's address, so every client (bootstrap and every later connection) goes through it.
cut() closes every open connection and refuses new ones, as a broker that went away would look to its clients;
restore() lets them through again. The broker itself keeps running: its memory-only storage keeps every record.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading

from services.localstack.processes import free_port


class TcpLink:
    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._cut = threading.Event()
        self._stopping = threading.Event()

    def start(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port), backlog=128)
        threading.Thread(target=self._accept, name="tcp-link-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._open |= {client, server}
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(256 * 1024)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._close(source, sink)

    def _close(self, *sockets: socket.socket) -> None:
        with self._lock:
            for sock in sockets:
                if sock in self._open:
                    self._open.discard(sock)
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    sock.close()

    def cut(self) -> None:
        """Every connection through the link is closed, and new ones are closed as soon as they are accepted."""
        self._cut.set()
        with self._lock:
            open_now = list(self._open)
        self._close(*open_now)

    def restore(self) -> None:
        self._cut.clear()

    def stop(self) -> None:
        self._stopping.set()
        self.cut()
        if self._listener:
            self._listener.close()


class TlsLink:
    """The broker's TLS listener, with client certificates required (StackOptions.tls): tansu here serves plaintext
    only, so TLS ends in this relay on loopback, as it would at a Kafka cluster's own SSL listener. Every client
    connection is TLS from the client to here; from here to the broker it is loopback TCP. asyncio runs it (one
    thread, one event loop): an ssl.SSLSocket must not be read in one thread while another writes it."""

    def __init__(self, upstream_port: int, context: ssl.SSLContext):
        self.upstream = ("127.0.0.1", upstream_port)
        self.port = free_port()
        self._context = context
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls-link", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(asyncio.start_server(
            self._relay, "127.0.0.1", self.port, ssl=self._context, ssl_handshake_timeout=10, backlog=128),
            self._loop).result(timeout=10)

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            broker_reader, broker_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pump(client_reader, broker_writer), _pump(broker_reader, client_writer))

    def stop(self) -> None:
        if not self._thread.is_alive():  # never started, or stopped already
            return
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """One direction of a connection; when either end goes, both do (a Kafka connection never half-closes)."""
    try:
        while data := await source.read(256 * 1024):
            sink.write(data)
            await sink.drain()
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        sink.close()
