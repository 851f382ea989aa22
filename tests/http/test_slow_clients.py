"""Slow and oversized clients: they are answered or cut off, and never starve the service."""

import json
import socket
import time

import pytest

from tests.conftest import API_KEY


def raw_request(port: int, head: bytes, body: bytes = b"", timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def status_and_json(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_huge_declared_body_is_refused_before_it_is_sent(api):
    head = (
        f"POST /api/v1/otp/verify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n"
    ).encode()
    started = time.monotonic()
    status, body = status_and_json(raw_request(api.port, head))  # no body sent at all: answered at once
    assert status == 413 and body["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert time.monotonic() - started < 5


@pytest.mark.slow
def test_an_oversized_chunked_body_is_refused_with_json(api):
    head = (
        f"POST /api/v1/otp/verify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"x" * 8192
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4)) + b"0\r\n\r\n"
    status, data = status_and_json(raw_request(api.port, head, body))
    assert status == 413 and data["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_slowloris_connections_do_not_starve_other_clients(api):
    """Many clients that send half a request and stop hold a socket each, not a worker: an async server
    keeps answering everyone else at once (the idle timeout closes them later)."""
    idle = []
    try:
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", api.port), timeout=5)
            sock.sendall(b"POST /api/v1/otp/verify HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            idle.append(sock)
        started = time.monotonic()
        for _ in range(20):
            assert api.get("/health", auth=None).status == 200
        assert time.monotonic() - started < 5
    finally:
        for sock in idle:
            sock.close()


def test_oversized_headers_get_431_json_and_huge_ones_a_closed_connection(api):
    big = "x" * 20_000
    resp = api.get("/api/v1/stats", headers={"X-Padding": big})
    assert resp.status == 431 and resp.body["error"]["code"] == "HEADERS_TOO_LARGE"
    huge = (f"GET /api/v1/stats HTTP/1.1\r\nHost: x\r\nX-Padding: {'y' * 100_000}\r\n\r\n").encode()
    try:
        answer = raw_request(api.port, huge, timeout=5)
    except (BrokenPipeError, ConnectionResetError):
        answer = b""
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400")  # refused at the connection, never buffered
    assert api.get("/health", auth=None).status == 200


def test_requests_abandoned_mid_body_are_no_longer_counted_in_flight(make_server, settings):
    """A client that hangs up halfway through its body ends its request: a graceful stop must not wait
    the whole grace period for requests that will never finish."""
    server = make_server(settings)
    head = (
        f"POST /api/v1/otp/verify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    sockets = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(4)]
    for sock in sockets:
        sock.sendall(head + b'{"device_id": ')
    deadline = time.monotonic() + 5
    while server.state.inflight < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.state.inflight == 4
    for sock in sockets:
        sock.close()
    deadline = time.monotonic() + 5
    while server.state.inflight and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.state.inflight == 0
    assert server.client.get("/health", auth=None).status == 200  # and a finished request is counted once
    deadline = time.monotonic() + 5  # its end is counted on the server's thread, just after the answer
    while server.state.inflight and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.state.inflight == 0


def test_requests_tornado_refuses_as_malformed_are_not_left_in_flight(make_server, settings):
    """Both Content-Length and Transfer-Encoding, or a Content-Length that is not a number: Tornado answers
    400 itself and drops the connection; the request must not stay counted (a graceful stop would wait)."""
    server = make_server(settings)
    auth = f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n".encode()
    heads = [
        b"POST /api/v1/otp/verify HTTP/1.1\r\nHost: x\r\n"
        + auth
        + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /api/v1/otp/verify HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: abc\r\n\r\n",
    ]
    for head in heads:
        assert raw_request(server.port, head, timeout=5).startswith(b"HTTP/1.1 400")
    deadline = time.monotonic() + 5
    while server.state.inflight and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.state.inflight == 0


def test_a_malformed_authorization_header_is_not_logged(api):
    """Tornado refuses a header with a bare CR and logs why, quoting the header: the key must not be there.
    (The secrets scan after every test searches every log line for API_KEY.)"""
    head = f"GET /api/v1/stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\r\n\r\n".encode()
    assert raw_request(api.port, head, timeout=5).startswith(b"HTTP/1.1 400")
