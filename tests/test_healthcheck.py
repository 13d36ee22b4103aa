"""The container health probe against real local servers: a DNS responder and an HTTP server on 127.0.0.1."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest

from enforcer.healthcheck import main


@pytest.fixture
def http_server() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(int(self.path.strip("/")))
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.mark.parametrize(("status", "code"), [(200, 0), (204, 0), (503, 1), (404, 1)])
def test_http_target(http_server: int, status: int, code: int) -> None:
    assert main([f"http://127.0.0.1:{http_server}/{status}"]) == code


def _dns_responder(reply: bool, flip_id: bool) -> tuple[socket.socket, threading.Thread]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)

    def serve() -> None:
        try:
            data, peer = sock.recvfrom(512)
        except OSError:
            return
        if reply:
            qid = bytes([data[0] ^ 0xFF, data[1]]) if flip_id else data[:2]
            sock.sendto(qid + bytes([data[2] | 0x80]) + data[3:], peer)  # QR set, the rest echoed

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return sock, thread


@pytest.mark.parametrize(("flip_id", "code"), [(False, 0), (True, 1)])
def test_dns_target_checks_the_answer_header(flip_id: bool, code: int) -> None:
    sock, thread = _dns_responder(reply=True, flip_id=flip_id)
    try:
        assert main([f"dns:127.0.0.1:{sock.getsockname()[1]}"]) == code
    finally:
        thread.join(5)
        sock.close()


def test_dns_target_without_answer_is_unhealthy(monkeypatch: pytest.MonkeyPatch) -> None:
    import enforcer.healthcheck as hc

    sock, thread = _dns_responder(reply=False, flip_id=False)
    real = hc.probe_dns
    monkeypatch.setattr(hc, "probe_dns", lambda host, port: real(host, port, timeout=0.3))
    try:
        assert main([f"dns:127.0.0.1:{sock.getsockname()[1]}"]) == 1
    finally:
        thread.join(5)
        sock.close()


@pytest.mark.parametrize("target", ["dns:[::1", "dns:127.0.0.1:99999", "http://127.0.0.1:1/"])
def test_bad_or_unreachable_target_is_one_line_and_unhealthy(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([target]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"unhealthy: {target}: ") and err.count("\n") == 1


def test_target_from_the_environment(http_server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENFORCER_HEALTH", f"http://127.0.0.1:{http_server}/200")
    assert main([]) == 0
    monkeypatch.setenv("ENFORCER_HEALTH", f"http://127.0.0.1:{http_server}/500")
    assert main([]) == 1
