"""A TCP relay between the stack and its broker, so a fault scenario can take the network away (StackOptions.broker_link).

The broker advertises the relay's address, so every client (bootstrap and every later connection) goes through it.
cut() closes every open connection and refuses new ones, as a broker that went away would look to its clients;
restore() lets them through again. The broker itself keeps running: its memory-only storage keeps every record.
"""

from __future__ import annotations

import socket
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
