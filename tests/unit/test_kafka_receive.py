"""The Kafka receive path with fewer copies gives the same responses as the library's, however the bytes arrive."""

import random
import socket
import ssl

import pytest
from kafka.errors import InvalidReceiveError
from kafka.protocol.metadata import MetadataRequest, MetadataResponse
from kafka.protocol.parser import KafkaProtocol

from services.common import kafka_receive


LETTERS = bytes(ord("a") + i % 26 for i in range(256))


def _framed_responses(parser: KafkaProtocol, count: int) -> tuple[list[MetadataResponse], bytes]:
    """`count` responses of 4 bytes to 1.5 MB (a long cluster id, as a fetch response's records are long bytes),
    each answering a request sent on `parser`, framed as a broker sends them back to back."""
    rng = random.Random(7)
    Response = MetadataResponse[12]
    responses, wire = [], b""
    for index in range(count):
        correlation_id = parser.send_request(MetadataRequest[12](topics=None, allow_auto_topic_creation=False,
                                                                 include_topic_authorized_operations=False))
        # the last one large: a frame read straight into its buffer with nothing after it must still be answered;
        # over 1 MiB, the rest of the frame goes to the decoder as a view
        size = 1_500_000 if index == count - 1 else rng.choice([0, 1, 4095, 4096, 4097, 300_000, 700_000, 1_200_000])
        response = Response(throttle_time_ms=index, controller_id=1, topics=[],
                            brokers=[Response.MetadataResponseBroker(node_id=1, host="broker", port=9092, rack=None)],
                            cluster_id=rng.randbytes(size).translate(LETTERS).decode())
        response.with_header(correlation_id=correlation_id)
        responses.append(response)
        wire += response.encode(framed=True, header=True)
    return responses, wire


@pytest.mark.parametrize("pieces", ["whole", "one byte at the frame edges", "random cuts", "4 KiB"])
def test_responses_are_the_same_however_the_bytes_are_cut(pieces):
    assert kafka_receive.install()
    parser = KafkaProtocol(client_id="test")
    expected, wire = _framed_responses(parser, 12)
    rng = random.Random(pieces)
    if pieces == "whole":
        cuts = []
    elif pieces == "4 KiB":
        cuts = list(range(4096, len(wire), 4096))
    elif pieces == "random cuts":
        cuts = sorted(rng.sample(range(1, len(wire)), 400))
    else:  # every byte of each 4-byte size prefix alone, and the byte after it
        cuts, offset = [], 0
        for response in expected:
            cuts += [offset + k for k in range(1, 6)]
            offset += len(response.encode(framed=True, header=True))
        cuts = [c for c in cuts if 0 < c < len(wire)]
    received = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)]):
        received += kafka_receive._receive_bytes(parser, wire[start:end])
    assert [correlation_id for correlation_id, _ in received] == list(range(1, len(expected) + 1))
    assert [response.to_dict() for _, response in received] == [response.to_dict() for response in expected]
    assert not parser._receiving and parser._rbuffer is None


def test_a_frame_larger_than_allowed_is_refused_as_the_library_refuses_it():
    assert kafka_receive.install()
    parser = KafkaProtocol(client_id="test", receive_message_max_bytes=1000)
    wire = (2000).to_bytes(4, "big") + b"\0" * 10
    with pytest.raises(InvalidReceiveError, match="Invalid frame length: 2000"):
        kafka_receive._receive_bytes(parser, wire)


class _Transport:
    """What _sock_recv reads from: a non-blocking socket."""

    def __init__(self, sock):
        self._sock = sock


def test_the_socket_is_read_a_piece_a_call_and_a_closed_peer_is_a_connection_error():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    try:
        payload = bytes(random.Random(1).getrandbits(8) for _ in range(100_000)) * 3
        theirs.sendall(payload[:200_000])
        data, error = kafka_receive._sock_recv(_Transport(ours))
        assert error is None and data == payload[:len(data)] and len(data) > 0
        rest = payload[len(data):200_000]
        while rest:  # what the kernel had not handed over yet
            more, error = kafka_receive._sock_recv(_Transport(ours))
            assert error is None and rest.startswith(more)
            rest = rest[len(more):]
        assert kafka_receive._sock_recv(_Transport(ours)) == (b"", None)  # nothing waiting: would block
        theirs.close()
        data, error = kafka_receive._sock_recv(_Transport(ours))
        assert data == b"" and "disconnected" in str(error)
    finally:
        ours.close()


def test_installed_for_the_pinned_release_and_used_by_every_client_the_services_make():
    import kafka.version
    from kafka.net.transport import KafkaSSLTransport, KafkaTCPTransport
    from kafka.protocol.frame import KafkaBytes

    import services.common.kafka  # noqa: F401  (installs it)

    assert kafka.version.__version__ == kafka_receive.WRITTEN_FOR, "the lock file's kafka-python changed: re-check"
    assert KafkaTCPTransport._sock_recv is kafka_receive._sock_recv
    assert KafkaSSLTransport._sock_recv is kafka_receive._ssl_sock_recv
    assert KafkaProtocol.receive_bytes is kafka_receive._receive_bytes
    assert KafkaBytes.read is kafka_receive._frame_read


def test_the_rest_of_a_large_frame_is_read_as_a_view_and_a_small_ones_as_bytes():
    large, small = kafka_receive._Frame(3_000_000), kafka_receive._Frame(1000)
    large[:] = bytes(range(256)) * (3_000_000 // 256) + bytes(3_000_000 % 256)
    assert large.read(4) == bytes([0, 1, 2, 3])
    rest = large.read()
    assert isinstance(rest, memoryview) and rest == memoryview(large)[4:] and large.tell() == len(large)
    assert small.read(10) == bytes(10) and type(small.read()) is bytes and small.tell() == 1000


class _Connection:
    def __init__(self, parser):
        self.parser = parser


def test_large_frames_read_straight_into_the_parser_give_the_same_responses():
    """What a connection does: read what the socket has (large frames straight into the parser's frame buffer),
    hand it to the parser, again; the broker's bytes arrive in uneven pieces."""
    assert kafka_receive.install()
    parser = KafkaProtocol(client_id="test")
    expected, wire = _framed_responses(parser, 12)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    transport = _Transport(ours)
    transport._protocol = _Connection(parser)
    rng = random.Random(3)
    received, direct = [], 0
    try:
        sent, rounds = 0, 0
        while sent < len(wire) or len(received) < len(expected):
            rounds += 1
            assert rounds < 20_000, f"stuck: {len(received)} of {len(expected)} responses after every byte was sent"
            if sent < len(wire):
                try:  # as much of the next piece as the socket takes now
                    sent += theirs.send(wire[sent:sent + rng.choice([1, 3, 5000, 70_000, 200_000, 900_000])])
                except BlockingIOError:
                    pass
            filling = kafka_receive._frame_in_progress(transport)
            before = filling.tell() if filling is not None else 0
            data, error = kafka_receive._sock_recv(transport)
            assert error is None
            if filling is not None and filling.tell() > before:
                direct += 1
            received += kafka_receive._receive_bytes(parser, data)
    finally:
        ours.close()
        theirs.close()
    assert direct > 0, "no frame was read straight into its buffer"
    assert [response.to_dict() for _, response in received] == [response.to_dict() for response in expected]
    assert not parser._receiving and parser._rbuffer is None


def test_a_frame_completed_straight_into_its_buffer_is_answered_with_nothing_after_it():
    """The fetch response is the last thing a broker sends until it is asked again: when its last bytes went
    straight into the frame buffer, the parser is handed no bytes and must still finish the frame."""
    assert kafka_receive.install()
    parser = KafkaProtocol(client_id="test")
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    transport = _Transport(ours)
    transport._protocol = _Connection(parser)
    try:
        Response = MetadataResponse[12]
        correlation_id = parser.send_request(MetadataRequest[12](topics=None, allow_auto_topic_creation=False,
                                                                 include_topic_authorized_operations=False))
        response = Response(throttle_time_ms=0, controller_id=1, topics=[], brokers=[], cluster_id="x" * 150_000)
        response.with_header(correlation_id=correlation_id)
        wire = response.encode(framed=True, header=True)
        theirs.sendall(wire[:50_000])
        data, _ = kafka_receive._sock_recv(transport)
        assert kafka_receive._receive_bytes(parser, data) == [] and parser._receiving
        theirs.sendall(wire[50_000:])  # about 100 KB, all of it in the socket at once
        data, error = kafka_receive._sock_recv(transport)
        assert error is None and data == b"" and parser._rbuffer.tell() == len(parser._rbuffer)
        (answered_id, answer), = kafka_receive._receive_bytes(parser, data)
        assert answered_id == correlation_id and answer.to_dict() == response.to_dict()
    finally:
        ours.close()
        theirs.close()


class _TlsSocket:
    """What an SSL socket does when OpenSSL holds decrypted records: recv answers from them, the selector sees none
    of it, and SSLWantReadError comes only once they are gone."""

    def __init__(self, records):
        self.records = list(records)

    def recv(self, size):
        if not self.records:
            raise ssl.SSLWantReadError
        return self.records.pop(0)

    def recv_into(self, buffer):
        if not self.records:
            raise ssl.SSLWantReadError
        record = self.records.pop(0)
        buffer[:len(record)] = record
        return len(record)


def test_over_tls_nothing_is_left_in_the_tls_layer_and_over_tcp_one_piece_a_call():
    records = [bytes([n]) * 16384 for n in range(5)]
    data, error = kafka_receive._ssl_sock_recv(_Transport(_TlsSocket(records)))
    assert error is None and data == b"".join(records)
    tcp = _Transport(_TlsSocket(records))
    assert kafka_receive._sock_recv(tcp) == (records[0], None) and len(tcp._sock.records) == 4


def test_over_tls_a_frame_filled_straight_is_followed_by_what_the_tls_layer_still_holds():
    parser = KafkaProtocol(client_id="test")
    parser._receiving, parser._rbuffer = True, kafka_receive._Frame(2 * 65536)
    records = [b"a" * 65536, b"b" * 65536, b"next frame"]
    transport = _Transport(_TlsSocket(records))
    transport._protocol = _Connection(parser)
    data, error = kafka_receive._ssl_sock_recv(transport)
    assert error is None and data == b"next frame"
    assert bytes(parser._rbuffer) == b"a" * 65536 + b"b" * 65536 and parser._rbuffer.tell() == 2 * 65536
