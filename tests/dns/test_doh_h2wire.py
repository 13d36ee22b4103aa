"""enforcer/dns/h2wire.py, the hand-written HTTP/2 server of DoH, with ``h2``'s client state machine as the reference:
every byte the server writes is parsed by ``h2`` (which checks frames, HPACK and flow control), every byte the
client sends comes from ``h2`` or, for the malformed cases h2 refuses to build, from raw frames. The last tests run
the same against a real ``enforcer dns`` over TLS (GOAWAY on a protocol error, counted in /metrics)."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config  # type: ignore[import-untyped]
import h2.connection  # type: ignore[import-untyped]
import h2.errors  # type: ignore[import-untyped]
import h2.events  # type: ignore[import-untyped]
import h2.settings  # type: ignore[import-untyped]
import pytest
from encryptedhelpers import EncResolver
from fakeupstream import FakeUpstream
from hpack import Decoder, Encoder

from enforcer.dns import h2wire
from enforcer.dns.h2wire import H2Error, H2Server, frame, response_block

POST = [(":method", "POST"), (":path", "/dns-query"), (":scheme", "https"), (":authority", "dns.test"),
        ("content-type", "application/dns-message"), ("accept", "application/dns-message")]  # fmt: skip
QUERY = bytes(range(12)) + b"\x07example\x00\x00\x01\x00\x01"


class Pair:
    """An ``h2`` client and an ``H2Server`` wired back to back in memory."""

    def __init__(self, max_streams: int = 100, initial_window: int | None = None, early: bool = False) -> None:
        self.server = H2Server(max_streams)
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.client.initiate_connection()
        if initial_window is not None:
            self.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: initial_window})
        self.requests: list[tuple[int, dict[str, str], bytes]] = []
        self.events: list[Any] = []
        if not early:  # early: the client does not know our SETTINGS yet (the caller delivers them)
            self.to_client(self.server.preface())
            self.pump()

    def to_client(self, data: bytes) -> None:
        if data:
            self.events += self.client.receive_data(data)

    def pump(self) -> None:
        """Client bytes to the server, the server's own replies back, until quiet."""
        while True:
            data = self.client.data_to_send()
            out = b"".join(self.server.take())
            if not data and not out:
                return
            if data:
                self.requests += self.server.receive(data)
                out += b"".join(self.server.take())
            self.to_client(out)

    def of(self, kind: Any, stream_id: int | None = None) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and (stream_id is None or e.stream_id == stream_id)]

    def response(self, stream_id: int) -> tuple[dict[str, str], bytes, bool]:
        heads = self.of(h2.events.ResponseReceived, stream_id)
        body = b"".join(e.data for e in self.of(h2.events.DataReceived, stream_id))
        ended = bool(self.of(h2.events.StreamEnded, stream_id))
        return ({k.decode(): v.decode() for k, v in heads[0].headers} if heads else {}), body, ended


def test_settings_exchange_and_ping() -> None:
    p = Pair()
    changed = p.of(h2.events.RemoteSettingsChanged)[0].changed_settings
    assert changed[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS].new_value == 100
    assert changed[h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE].new_value == h2wire.MAX_HEADER_BLOCK
    assert p.of(h2.events.SettingsAcknowledged)  # our SETTINGS ACK of the client's
    assert p.client.outbound_flow_control_window == h2wire.CONNECTION_WINDOW  # our WINDOW_UPDATE in the preface
    assert p.client.inbound_flow_control_window == 65_535  # the client's own window toward us is untouched
    p.client.ping(b"12345678")
    p.pump()
    assert [e.ping_data for e in p.of(h2.events.PingAckReceived)] == [b"12345678"]


def test_post_and_get_answered_with_headers_h2_accepts() -> None:
    p = Pair()
    p.client.send_headers(1, POST)
    p.client.send_data(1, QUERY, end_stream=True)
    p.client.send_headers(3, [(":method", "GET"), (":path", "/dns-query/phone-1?dns=AAAB"), (":scheme", "https"),
                              (":authority", "dns.test")], end_stream=True)  # fmt: skip
    p.pump()
    assert p.requests == [
        (1, {":method": "POST", ":path": "/dns-query", "content-type": "application/dns-message"}, QUERY),
        (3, {":method": "GET", ":path": "/dns-query/phone-1?dns=AAAB"}, b""),
    ]
    p.to_client(p.server.respond(3, 200, b"answer-3", max_age=42) + p.server.respond(1, 404, b""))
    assert p.response(3) == ({":status": "200", "content-length": "8", "content-type": "application/dns-message",
                              "cache-control": "max-age=42"}, b"answer-3", True)  # fmt: skip
    assert p.response(1) == ({":status": "404", "content-length": "0"}, b"", True)
    assert p.server.streams == {}
    assert p.server.respond(1, 200, b"again") == b""  # a stream answered once is gone


@pytest.mark.parametrize("status", [200, 400, 403, 404, 405, 413, 415, 500])
def test_response_blocks_decode_and_leave_the_table_empty(status: int) -> None:
    decoder = Decoder()
    block = response_block(status, 1234, 60 if status == 200 else None)
    got: Any = decoder.decode(block)
    want = [(":status", str(status)), ("content-length", "1234")]
    if status == 200:
        want += [("content-type", "application/dns-message"), ("cache-control", "max-age=60")]
    assert got == want
    assert len(decoder.header_table.dynamic_entries) == 0


def test_many_streams_out_of_order_each_get_their_answer() -> None:
    p = Pair()
    ids = list(range(1, 200, 2))
    for sid in ids:
        p.client.send_headers(sid, POST)
        p.client.send_data(sid, QUERY + bytes([sid]), end_stream=True)
    p.pump()
    assert [r[0] for r in p.requests] == ids and all(r[2] == QUERY + bytes([r[0]]) for r in p.requests)
    p.to_client(b"".join(p.server.respond(sid, 200, b"a" + bytes([sid]), 5) for sid in reversed(ids)))
    for sid in ids:
        assert p.response(sid)[1:] == (b"a" + bytes([sid]), True)


def test_continuation_padding_priority_and_trailers() -> None:
    server = H2Server(10)
    enc = Encoder()
    block = enc.encode([*POST, ("x-filler", "f" * 3000)])
    third = len(block) // 3
    pad = 7
    # HEADERS (padded, with priority fields) + 2 CONTINUATION frames, then padded DATA, then trailers.
    head = bytes([pad]) + struct.pack("!IB", 0, 16) + block[:third] + b"\0" * pad
    raw = frame(h2wire.HEADERS, h2wire.PADDED | h2wire.PRIORITY_FLAG, 1, head)
    raw += frame(h2wire.CONTINUATION, 0, 1, block[third : 2 * third])
    raw += frame(h2wire.CONTINUATION, h2wire.END_HEADERS, 1, block[2 * third :])
    raw += frame(h2wire.PRIORITY, 0, 1, struct.pack("!IB", 0, 200))
    raw += frame(h2wire.DATA, h2wire.PADDED, 1, bytes([3]) + QUERY + b"\0\0\0")
    raw += frame(h2wire.HEADERS, h2wire.END_HEADERS | h2wire.END_STREAM, 1, enc.encode([("x-trailer", "t")]))
    raw += frame(0xFA, 0, 0, b"unknown frame type, ignored")
    assert server.receive(h2wire.PREFACE + frame(h2wire.SETTINGS, 0, 0)) == []
    got = server.receive(raw)
    assert got == [(1, {":method": "POST", ":path": "/dns-query", "content-type": "application/dns-message"}, QUERY)]


def test_frames_split_at_every_byte_boundary() -> None:
    p = Pair()
    p.client.send_headers(1, POST)
    p.client.send_data(1, QUERY, end_stream=True)
    data = p.client.data_to_send()
    got = []
    for i in range(len(data)):
        got += p.server.receive(data[i : i + 1])
    assert got == [(1, {":method": "POST", ":path": "/dns-query", "content-type": "application/dns-message"}, QUERY)]


def test_stream_window_exhausted_rest_sent_after_window_update() -> None:
    p = Pair(initial_window=10)
    p.client.send_headers(1, POST)
    p.client.send_data(1, QUERY, end_stream=True)
    p.pump()
    answer = bytes(range(256)) * 2
    p.to_client(p.server.respond(1, 200, answer, 1))
    headers, body, ended = p.response(1)
    assert headers["content-length"] == "512" and body == answer[:10] and not ended
    assert p.server.blocked == [1]
    for _ in range(100):  # the client opens its window as it reads, 50 bytes at a time
        if p.response(1)[2]:
            break
        p.client.increment_flow_control_window(50, stream_id=1)
        p.pump()
    assert p.response(1)[1:] == (answer, True)
    assert p.server.blocked == [] and p.server.streams == {}


def test_connection_window_exhausted_and_a_later_answer_waits_its_turn() -> None:
    p = Pair()
    ids = [1, 3, 5]
    for sid in ids:
        p.client.send_headers(sid, POST)
        p.client.send_data(sid, QUERY, end_stream=True)
    p.pump()
    big = b"x" * 40_000
    p.to_client(p.server.respond(1, 200, big, 1) + p.server.respond(3, 200, big, 1))
    assert p.response(1)[1:] == (big, True)
    assert len(p.response(3)[1]) == 65_535 - 40_000 and not p.response(3)[2]
    p.to_client(p.server.respond(5, 200, b"small", 1))  # queued behind stream 3, not around it
    assert p.response(5)[1] == b""
    p.client.increment_flow_control_window(65_535)
    p.pump()
    assert p.response(3)[1:] == (big, True) and p.response(5)[1:] == (b"small", True)


def test_large_answer_split_to_max_frame_size() -> None:
    p = Pair(initial_window=2**20)
    p.client.increment_flow_control_window(2**20)
    p.client.send_headers(1, POST)
    p.client.send_data(1, QUERY, end_stream=True)
    p.pump()
    answer = b"y" * 60_000
    p.to_client(p.server.respond(1, 200, answer, 1))
    assert p.response(1)[1:] == (answer, True)
    assert all(len(e.data) <= 16_384 for e in p.of(h2.events.DataReceived, 1))


def test_stream_cap_refuses_the_extra_stream_and_keeps_serving() -> None:
    p = Pair(max_streams=2, early=True)  # three streams sent before our SETTINGS (cap 2) reached the client
    for sid in (1, 3, 5):
        p.client.send_headers(sid, POST)
        p.client.send_data(sid, QUERY, end_stream=True)
    p.to_client(p.server.preface())
    p.pump()
    assert [r[0] for r in p.requests] == [1, 3] and p.server.stream_limit == 1
    resets = p.of(h2.events.StreamReset)
    assert [(e.stream_id, e.error_code) for e in resets] == [(5, h2.errors.ErrorCodes.REFUSED_STREAM)]
    p.to_client(p.server.respond(1, 200, b"one", 1))
    p.client.send_headers(7, POST)  # a slot is free again
    p.client.send_data(7, QUERY, end_stream=True)
    p.pump()
    assert [r[0] for r in p.requests] == [1, 3, 7]


def test_client_reset_drops_the_answer_and_oversized_body_gets_413() -> None:
    p = Pair()
    p.client.send_headers(1, POST)
    p.client.send_data(1, QUERY, end_stream=True)
    p.pump()
    p.client.reset_stream(1)
    p.pump()
    assert p.server.respond(1, 200, b"late", 1) == b""
    p.client.send_headers(3, POST)
    p.client.send_data(3, b"z" * 16_000)
    p.client.send_data(3, b"z" * 1_000, end_stream=True)
    p.pump()
    assert p.server.too_large == 1 and [r[0] for r in p.requests] == [1]
    assert p.response(3) == ({":status": "413", "content-length": "0"}, b"", True)


def test_rapid_reset_streams_count_until_answered() -> None:
    """HTTP/2 "rapid reset": each request reset as soon as it is sent. The reset stream left the count of open
    streams while its query was still being answered, so one connection had any number in flight (1,000 with a cap
    of 100) and could take every forwarder slot. It counts until its answer (dropped) or its end."""
    p = Pair(max_streams=4)
    for sid in range(1, 21, 2):
        p.client.send_headers(sid, POST)
        p.client.send_data(sid, QUERY, end_stream=True)
        p.client.reset_stream(sid)
    p.pump()
    assert [r[0] for r in p.requests] == [1, 3, 5, 7] and p.server.stream_limit == 6
    assert p.server.waiting()  # four queries still owe an answer
    assert p.server.respond(1, 200, b"late", 1) == b""  # dropped: the client reset it
    p.server.done(3)  # the work for 3 ended without an answer
    for sid in (21, 23, 25):
        p.client.send_headers(sid, POST)
        p.client.send_data(sid, QUERY, end_stream=True)
    p.pump()
    assert [r[0] for r in p.requests] == [1, 3, 5, 7, 21, 23] and p.server.stream_limit == 7


def test_waiting_means_an_answer_is_owed() -> None:
    """The idle timer keeps a connection while we owe an answer, not while the client owes the rest of a request."""
    p = Pair()
    p.client.send_headers(1, POST)  # no END_STREAM: the body never comes
    p.pump()
    assert p.server.streams and not p.server.waiting()
    p.client.send_data(1, QUERY, end_stream=True)
    p.pump()
    assert p.server.waiting()
    p.to_client(p.server.respond(1, 200, b"one", 1))
    assert not p.server.waiting()


def test_goaway_from_the_client_is_noted() -> None:
    p = Pair()
    p.client.close_connection()
    p.pump()
    assert p.server.goaway_received


def _error(raw: bytes, settings_first: bool = True) -> int:
    server = H2Server(10)
    start = h2wire.PREFACE + (frame(h2wire.SETTINGS, 0, 0) if settings_first else b"")
    with pytest.raises(H2Error) as caught:
        server.receive(start + raw)
    # The GOAWAY we would send parses in h2 as a ConnectionTerminated with that code.
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    events = client.receive_data(server.preface() + server.goaway(caught.value.code))
    terminated = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert terminated and terminated[0].error_code == caught.value.code
    return caught.value.code


def test_protocol_errors_get_the_right_goaway_code() -> None:
    enc = Encoder()
    block = enc.encode(POST)
    assert _error(frame(h2wire.HEADERS, h2wire.END_HEADERS, 1, block), settings_first=False) == h2wire.PROTOCOL_ERROR
    assert _error(b"\x00\x40\x01" + bytes([h2wire.DATA, 0]) + b"\0\0\0\1") == h2wire.FRAME_SIZE_ERROR
    assert _error(frame(h2wire.HEADERS, h2wire.END_HEADERS, 0, block)) == h2wire.PROTOCOL_ERROR
    assert _error(frame(h2wire.HEADERS, h2wire.END_HEADERS, 2, block)) == h2wire.PROTOCOL_ERROR
    assert _error(frame(h2wire.HEADERS, 0, 1, block) + frame(h2wire.DATA, 0, 1, b"x")) == h2wire.PROTOCOL_ERROR
    assert _error(frame(h2wire.CONTINUATION, h2wire.END_HEADERS, 1, block)) == h2wire.PROTOCOL_ERROR
    assert _error(frame(h2wire.HEADERS, h2wire.END_HEADERS, 1, b"\xff\xff\xff\xff\x7f")) == h2wire.COMPRESSION_ERROR
    assert _error(frame(h2wire.DATA, 0, 1, QUERY)) == h2wire.PROTOCOL_ERROR  # DATA on an idle stream
    assert _error(frame(h2wire.SETTINGS, 0, 0, b"\0\4\0")) == h2wire.FRAME_SIZE_ERROR
    assert _error(frame(h2wire.SETTINGS, 0, 1, b"")) == h2wire.PROTOCOL_ERROR
    assert _error(frame(h2wire.SETTINGS, 0, 0, struct.pack("!HI", 4, 2**31))) == h2wire.FLOW_CONTROL_ERROR
    assert _error(frame(h2wire.SETTINGS, 0, 0, struct.pack("!HI", 5, 100))) == h2wire.PROTOCOL_ERROR
    assert _error(frame(h2wire.PING, 0, 0, b"1234")) == h2wire.FRAME_SIZE_ERROR
    assert _error(frame(h2wire.WINDOW_UPDATE, 0, 0, b"\0\0\0\0")) == h2wire.PROTOCOL_ERROR
    assert _error(frame(h2wire.WINDOW_UPDATE, 0, 0, struct.pack("!I", 2**31 - 1))) == h2wire.FLOW_CONTROL_ERROR
    assert _error(frame(h2wire.PUSH_PROMISE, h2wire.END_HEADERS, 1, b"\0\0\0\2" + block)) == h2wire.PROTOCOL_ERROR
    assert _error(frame(h2wire.RST_STREAM, 0, 9, b"\0\0\0\0")) == h2wire.PROTOCOL_ERROR  # an idle stream
    huge = frame(h2wire.HEADERS, 0, 1, block) + frame(h2wire.CONTINUATION, 0, 1, b"\0" * 16_384)
    assert _error(huge) == h2wire.ENHANCE_YOUR_CALM
    done = frame(h2wire.HEADERS, h2wire.END_HEADERS | h2wire.END_STREAM, 1, block)
    assert _error(done + frame(h2wire.DATA, 0, 1, b"x")) == h2wire.STREAM_CLOSED


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nHost: dns.test\r\n\r\n"])
def test_not_a_preface_is_refused(data: bytes) -> None:
    with pytest.raises(H2Error) as caught:
        H2Server(10).receive(data)  # shorter than the preface and already different, or as long and different
    assert caught.value.code == h2wire.PROTOCOL_ERROR


# --- against a real resolver over TLS --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resolver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EncResolver]:
    up = FakeUpstream()
    r = EncResolver(tmp_path_factory.mktemp("h2wire"), up.address)
    yield r
    r.stop()
    up.close()


def _h2_socket(port: int) -> ssl.SSLSocket:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
    assert sock.selected_alpn_protocol() == "h2"
    return sock


def _read_until_closed(sock: ssl.SSLSocket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65_536)
        except (ConnectionError, ssl.SSLError):
            return data
        if not chunk:
            return data
        data += chunk


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_resolver_sends_goaway_and_counts_a_protocol_error(resolver: EncResolver) -> None:
    before = resolver.metric("enforcer_dns_encrypted_connections_total", transport="doh", outcome="protocol_error")
    with _h2_socket(resolver.doh_port) as sock:
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        sock.sendall(client.data_to_send() + frame(h2wire.HEADERS, h2wire.END_HEADERS, 2, Encoder().encode(POST)))
        events = client.receive_data(_read_until_closed(sock))
    terminated = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert terminated and terminated[0].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    after = resolver.metric("enforcer_dns_encrypted_connections_total", transport="doh", outcome="protocol_error")
    assert after == before + 1 and resolver.alive()


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_resolver_answers_under_a_tiny_client_window(resolver: EncResolver) -> None:
    """A client whose stream window is 16 bytes still gets its whole answer, in pieces, as it opens the window."""
    with _h2_socket(resolver.doh_port) as sock:
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 16})
        import dns.message

        query = dns.message.make_query("weixin.qq.com", "A").to_wire()
        client.send_headers(1, POST)
        client.send_data(1, query, end_stream=True)
        sock.sendall(client.data_to_send())
        body, ended = b"", False
        while not ended:
            data = sock.recv(65_536)
            assert data, "connection closed before the answer ended"
            for e in client.receive_data(data):
                if isinstance(e, h2.events.DataReceived):
                    body += e.data
                elif isinstance(e, h2.events.StreamEnded):
                    ended = True
            if not ended:
                client.increment_flow_control_window(16, stream_id=1)
            sock.sendall(client.data_to_send())
    reply = dns.message.from_wire(body)
    assert [rr.to_text() for rrset in reply.answer for rr in rrset] == ["0.0.0.0"]


def test_min_ttl_matches_dnspython_and_the_memo_follows_the_bytes() -> None:
    import dns.message
    import dns.rrset

    from enforcer.dns import doh

    for ttls in ([300], [60, 5, 3600], [0], []):
        reply = dns.message.make_response(dns.message.make_query("example.test", "A"))
        for i, ttl in enumerate(ttls):
            reply.answer.append(dns.rrset.from_text("example.test.", ttl, "IN", "A", f"192.0.2.{i + 1}"))
        for qid in (1, 2):  # the memo ignores the ID
            reply.id = qid
            assert doh.min_ttl(reply.to_wire()) == (min(ttls) if ttls else 0)
    assert doh.min_ttl(b"\x00\x01\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00\x07broken") == 0  # cut short
    assert len(doh._TTLS) <= doh.TTL_MEMO


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_resolver_closes_a_connection_whose_request_never_ends(tmp_path: Path) -> None:
    """HEADERS without END_STREAM, then silence: the connection (and its place under the per-source cap) was held
    for ever; it is closed after --tls-idle-timeout like any idle one."""
    up = FakeUpstream()
    r = EncResolver(tmp_path, up.address, "--tls-idle-timeout", "1")
    try:
        with _h2_socket(r.doh_port) as sock:
            client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            client.initiate_connection()
            client.send_headers(1, POST)
            sock.sendall(client.data_to_send())
            started = time.monotonic()
            _read_until_closed(sock)  # the socket's own timeout (10 s) fails the test if it is never closed
            assert time.monotonic() - started < 9
        assert r.metric("enforcer_dns_encrypted_connections_total", transport="doh", outcome="idle_timeout") >= 1
    finally:
        r.stop()
        up.close()
