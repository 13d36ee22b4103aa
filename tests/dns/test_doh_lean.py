"""The lean HTTP/2 request path of enforcer/dns/doh.py (h2 without inbound header validation, headers read as
bytes, only ``:method``, ``:path`` and ``content-type`` decoded) against a real ``enforcer dns``, from a raw h2
client over real TLS: many streams in flight on one connection each get their own answer, extra headers are
ignored, a request missing ``:path`` or ``content-type`` gets its HTTP error and the connection keeps serving. The
blocked name is sinkholed by the resolver itself; the other names go to the local fake upstream."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import dns.message
import h2.config  # type: ignore[import-untyped]
import h2.connection  # type: ignore[import-untyped]
import h2.events  # type: ignore[import-untyped]
import pytest
from encryptedhelpers import EncResolver
from fakeupstream import FakeUpstream

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

BLOCKED = "weixin.qq.com"


@pytest.fixture(scope="module")
def resolver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EncResolver]:
    up = FakeUpstream(records={"intranet.example": ["intranet.example. 60 IN A 127.0.0.1"]})
    r = EncResolver(tmp_path_factory.mktemp("doh-lean"), up.address)
    yield r
    r.stop()
    up.close()


class _Client:
    """A raw HTTP/2 client on one TLS connection; ``exchange`` sends requests and returns every stream's answer."""

    def __init__(self, port: int) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        self.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
        # No outbound checks: the test sends requests h2 would refuse to build (no :path).
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(validate_outbound_headers=False))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.next_id = 1

    def exchange(self, requests: list[tuple[list[tuple[str, str]], bytes]]) -> dict[int, tuple[dict[str, str], bytes]]:
        ids = []
        for headers, body in requests:
            sid, self.next_id = self.next_id, self.next_id + 2
            self.conn.send_headers(sid, headers, end_stream=not body)
            if body:
                self.conn.send_data(sid, body, end_stream=True)
            ids.append(sid)
        self.sock.sendall(self.conn.data_to_send())
        got: dict[int, tuple[dict[str, str], bytearray]] = {}
        done: set[int] = set()
        while done != set(ids):
            data = self.sock.recv(65_536)
            assert data, f"connection closed with {len(set(ids) - done)} streams unanswered"
            for e in self.conn.receive_data(data):
                if isinstance(e, h2.events.ResponseReceived):
                    got[e.stream_id] = ({k.decode(): v.decode() for k, v in e.headers}, bytearray())
                elif isinstance(e, h2.events.DataReceived):
                    got[e.stream_id][1].extend(e.data)
                    self.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                elif isinstance(e, h2.events.StreamEnded):
                    done.add(e.stream_id)
            self.sock.sendall(self.conn.data_to_send())
        return {sid: (got[sid][0], bytes(got[sid][1])) for sid in ids}

    def close(self) -> None:
        self.sock.close()


def _post(path: str = "/dns-query", content_type: str | None = "application/dns-message") -> list[tuple[str, str]]:
    headers = [(":method", "POST"), (":path", path), (":scheme", "https"), (":authority", "127.0.0.1")]
    return headers + ([("content-type", content_type)] if content_type is not None else [])


def _query(name: str, qid: int) -> bytes:
    q = dns.message.make_query(name, "A")
    q.id = qid
    return q.to_wire()


def test_many_streams_in_flight_each_get_their_answer(resolver: EncResolver) -> None:
    client = _Client(resolver.doh_port)
    try:
        for round_ in range(3):  # later rounds reuse the client's HPACK dynamic table entries
            names = [BLOCKED if i % 2 else "intranet.example" for i in range(60)]
            answers = client.exchange([(_post(), _query(n, round_ * 100 + i)) for i, n in enumerate(names)])
            assert len(answers) == 60
            for (headers, body), (i, name) in zip(answers.values(), enumerate(names), strict=True):
                assert headers[":status"] == "200"
                assert headers["content-type"] == "application/dns-message"
                assert headers["content-length"] == str(len(body))
                reply = dns.message.from_wire(body)
                assert reply.id == round_ * 100 + i
                assert str(reply.question[0].name) == name + "."
                addr = reply.answer[0][0].address
                assert addr == ("0.0.0.0" if name == BLOCKED else "127.0.0.1"), (name, addr)
                assert headers["cache-control"].startswith("max-age=")
    finally:
        client.close()


def test_extra_and_odd_headers_and_errors_on_one_connection(resolver: EncResolver) -> None:
    client = _Client(resolver.doh_port)
    try:
        extra = [*_post(content_type="Application/DNS-Message; charset=x"), ("accept", "application/dns-message"),
                 ("user-agent", "x" * 300), ("x-note", "\u00e9t\u00e9")]  # fmt: skip
        no_path = [h for h in _post() if h[0] != ":path"]
        answers = list(client.exchange([
            (extra, _query("intranet.example", 7)),
            (no_path, _query("intranet.example", 8)),
            (_post(content_type=None), _query("intranet.example", 9)),
            (_post("/elsewhere"), _query("intranet.example", 10)),
            (_post("/dns-query/Bad_Id"), _query("intranet.example", 11)),
            (_post(), b"\x00\x01"),  # too short for a DNS message
            (_post(), _query(BLOCKED, 12)),
        ]).values())  # fmt: skip
        assert [h[":status"] for h, _ in answers] == ["200", "404", "415", "404", "403", "400", "200"]
        assert dns.message.from_wire(answers[0][1]).id == 7
        assert dns.message.from_wire(answers[6][1]).answer[0][0].address == "0.0.0.0"
    finally:
        client.close()
    assert resolver.alive()
