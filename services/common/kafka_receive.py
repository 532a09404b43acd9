"""Fewer copies of what the Kafka consumers receive: kafka-python's receive path, read straight into its frames.

A batch of 32 listing events is about 10 MB of photos. kafka-python 3.0.12 reads its socket 4 KiB at a time (2,500
`recv` calls and as many bytes objects for one fetch), joins them, slices the joined bytes again to fill its frame
buffer, copies the frame's rest twice for the response decoder, which copies the records out once more: about seven
passes over every photo before a handler sees it, the largest entry in the preprocessing worker's profile (a fifth of
its time on the GPU path's stand-in).

`install()` replaces three methods with ones that do what they did with fewer passes:
- the transport's socket read: while a large frame is being received, straight into that frame's buffer
  (`recv_into`); otherwise one piece of up to 256 KiB (over TLS, pieces until the TLS layer wants more);
- the parser's `receive_bytes`: the frame buffer filled from a view of what was read (no slice copy); a frame its
  transport filled is finished when next handed data, even none; a large frame's rest goes to the decoder as a view;
- `KafkaBytes.read`: a field of 4 KiB or more copied once, not twice.
The same bytes, frames, responses and errors; only kafka-python's own bytes-received metric leaves out the bytes read
straight into a frame (the services do not export the library's metrics). It applies only to the kafka-python
release it was written against, and only where that release's methods are still the ones replaced (checked by their
code); anything else is left as it is, with a warning. `services.common.kafka` installs it in every process that
makes a client with it.
"""

from __future__ import annotations

import logging
import ssl

from kafka.protocol.frame import KafkaBytes

# Logged as the library's transport logs (filters and levels set for it keep applying).
log = logging.getLogger("kafka.net.transport")

RECEIVE_PIECE_BYTES = 256 * 1024
# What is left of a frame for the socket to be read straight into it (below this, a piece and one copy cost less).
DIRECT_MIN_BYTES = 64 * 1024
# A field read smaller than this takes the library's own path (a memoryview costs more than it saves on 4 bytes).
VIEW_READ_MIN_BYTES = 4096
# The rest of a frame this large, read whole, is handed over as a view (only a response decoder reads that much).
WHOLE_VIEW_MIN_BYTES = 1024 * 1024
WRITTEN_FOR = "3.0.12"

_installed = False


def _sock_recv(self):
    """KafkaTCPTransport._sock_recv: while a large frame is being received, the socket is read straight into that
    frame's buffer until the frame is full or nothing more is waiting (no piece to join, none to copy into the
    frame); then, or otherwise, one piece of up to RECEIVE_PIECE_BYTES (the library: every 4 KiB until nothing is
    waiting), so the parser sees a new frame's size before its body is read. The parser finishes a frame filled here
    when it is next handed data, even none (receive_bytes below), which is at once; the selector is level-triggered,
    so whatever is still waiting brings the next call straight away."""
    return _read(self, drain=False)


def _ssl_sock_recv(self):
    """KafkaSSLTransport._sock_recv: the same, but every piece is read until the TLS layer wants more from the socket:
    what OpenSSL has decrypted and holds is not seen by the selector, so nothing may be left there."""
    return _read(self, drain=True)


class _PeerClosed(Exception):
    """A read returned nothing: the peer closed the connection."""


def _read(transport, drain: bool):
    import kafka.errors as errors

    sock = transport._sock
    frame = _frame_in_progress(transport)
    pieces = []
    error = None
    try:
        if frame is not None and len(frame) - frame.tell() >= DIRECT_MIN_BYTES:
            with memoryview(frame) as whole:
                while frame.tell() < len(frame):
                    with whole[frame.tell():] as rest:
                        count = sock.recv_into(rest)
                    if not count:
                        raise _PeerClosed
                    frame.seek(frame.tell() + count)
        while True:
            piece = sock.recv(RECEIVE_PIECE_BYTES)
            if not piece:
                raise _PeerClosed
            pieces.append(piece)
            if not drain:
                break
    except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        pass
    except _PeerClosed:
        log.error("%s: socket disconnected", transport)
        error = errors.KafkaConnectionError("socket disconnected")
    except BaseException as failure:  # noqa: BLE001  (as the library: any socket failure closes the connection)
        log.exception("%s: Error receiving network data closing socket", transport)
        error = errors.KafkaConnectionError(failure)
    # One piece is returned as it is (bytes.join of one bytes object returns that object).
    return b"".join(pieces), error


def _frame_in_progress(transport):
    """The frame buffer the connection's parser is filling, or None (no parser, or between frames)."""
    parser = getattr(getattr(transport, "_protocol", None), "parser", None)
    if parser is None or not getattr(parser, "_receiving", False):
        return None
    return parser._rbuffer


def _receive_bytes(self, data):
    """KafkaProtocol.receive_bytes with the frame and header buffers written from views of `data`, not slices."""
    import kafka.errors as errors
    from kafka.protocol.schemas.fields.codecs import Int32

    i = 0
    n = len(data)
    responses = []
    view = memoryview(data)
    try:
        while i < n or self._receiving and self._rbuffer.tell() == len(self._rbuffer):  # or filled by _sock_recv
            if not self._receiving:
                bytes_to_read = min(4 - self._header.tell(), n - i)
                self._header.write(view[i:i + bytes_to_read])
                i += bytes_to_read
                if self._header.tell() == 4:
                    self._header.seek(0)
                    nbytes = Int32.decode(self._header)
                    self._validate_frame_size(nbytes)
                    self._rbuffer = _Frame(nbytes)
                    self._receiving = True
                elif self._header.tell() > 4:
                    raise errors.KafkaError("this should not happen - are you threading?")
            if self._receiving:
                total_bytes = len(self._rbuffer)
                bytes_to_read = min(total_bytes - self._rbuffer.tell(), n - i)
                self._rbuffer.write(view[i:i + bytes_to_read])
                i += bytes_to_read
                staged_bytes = self._rbuffer.tell()
                if staged_bytes > total_bytes:
                    raise errors.KafkaError("Receive buffer has more bytes than expected?")
                if staged_bytes != total_bytes:
                    break
                self._receiving = False
                self._rbuffer.seek(0)
                responses.append(self._process_response(self._rbuffer))
                self._reset_buffer()
    finally:
        view.release()
    return responses


def _frame_read(self, nbytes=None):
    """KafkaBytes.read with one copy of a large field (the library: a bytearray slice, then bytes of it)."""
    if nbytes is None:
        nbytes = len(self) - self._idx
    start = self._idx
    self._idx = min(self._idx + nbytes, len(self))
    if self._idx - start < VIEW_READ_MIN_BYTES:
        return bytes(self[start:self._idx])
    with memoryview(self) as whole:
        with whole[start:self._idx] as part:
            return bytes(part)


class _Frame(KafkaBytes):
    """A received frame whose rest, read whole, is a view of it when large: the response decoder reads the rest of
    a frame once and only ever takes a memoryview of it (copying each field it keeps), so a 10 MB fetch response is
    not copied whole first. Smaller reads, and the rest of a small frame (a SASL token, kept as bytes), are
    copies as the library's."""

    def read(self, nbytes=None):
        if nbytes is None and len(self) - self._idx >= WHOLE_VIEW_MIN_BYTES:
            start, self._idx = self._idx, len(self)
            return memoryview(self)[start:]
        return _frame_read(self, nbytes)


def _looks_like_the_original(function, *markers) -> bool:
    code = getattr(function, "__code__", None)
    return code is not None and all(marker in code.co_consts or marker in code.co_names for marker in markers)


def install() -> bool:
    """Replaces the receive path's methods once; False (and a warning) where the installed kafka-python is not the
    release they were written against, or its methods changed."""
    global _installed
    if _installed:
        return True
    import kafka.version
    from kafka.net.transport import KafkaSSLTransport, KafkaTCPTransport
    from kafka.protocol.frame import KafkaBytes
    from kafka.protocol.parser import KafkaProtocol

    originals = ((KafkaTCPTransport._sock_recv, (4096, "recv")), (KafkaSSLTransport._sock_recv, (4096, "recv")),
                 (KafkaProtocol.receive_bytes, ("_rbuffer", "_process_response")),
                 (KafkaBytes.read, ("_idx",)))
    if kafka.version.__version__ != WRITTEN_FOR or not all(_looks_like_the_original(f, *m) for f, m in originals):
        log.warning("kafka-python's receive path left as it is: written for kafka-python %s, this is %s",
                    WRITTEN_FOR, kafka.version.__version__)
        return False
    KafkaTCPTransport._sock_recv = _sock_recv
    KafkaSSLTransport._sock_recv = _ssl_sock_recv
    KafkaProtocol.receive_bytes = _receive_bytes
    KafkaBytes.read = _frame_read
    _installed = True
    return True
