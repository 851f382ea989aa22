"""Keep-alive connections after an early refusal: a request refused before its body was read (401, 413, 404…)
ends its connection, and says so with `Connection: close`, so a client that pipelined more requests on it knows
they were not answered and sends them again (RFC 9112 §9.6) instead of waiting for answers that never come."""

import json
import socket

from tests.conftest import API_KEY

VERIFY = b'{"device_id": "D1", "otp": "123456"}'


def post(path: str, body: bytes, key: str, length: int | None = None) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body) if length is None else length}\r\n\r\n"
    ).encode() + body


HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


def exchange(port: int, data: bytes, timeout: float = 3) -> tuple[list[tuple[int, dict[str, str]]], bool]:
    """Send `data` on one connection; the (status, headers) of each answer, and whether the server closed it
    (rather than leaving it open, idle, until the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received, closed = b"", False
        try:
            while chunk := sock.recv(65536):
                received += chunk
            closed = True
        except TimeoutError:
            pass
        except ConnectionResetError:
            closed = True
    answers = []
    while received:
        head, _, rest = received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        answers.append((int(lines[0].split()[1]), headers))
        received = rest[length:]
    return answers, closed


def test_a_post_refused_before_its_body_is_read_says_the_connection_closes(api):
    """The attack review's finding: the wrong key's 401 went out before the body was read, the server then
    dropped the connection without a word, and the /health pipelined behind it got no answer."""
    answers, closed = exchange(api.port, post("/api/v1/otp/verify", VERIFY, "wrong-key") + HEALTH)
    assert answers[0][0] == 401
    if len(answers) == 1:  # the second request was not answered: the first answer must have said so
        assert answers[0][1].get("connection", "").lower() == "close", answers[0][1]
        assert closed
    else:
        assert [status for status, _ in answers] == [401, 200]


def test_every_early_refusal_of_a_post_says_the_connection_closes(api):
    """Unknown route (404) and a declared body over the limit (413, its body never sent) end the same way."""
    for request, status in (
        (post("/api/v1/nowhere", VERIFY, API_KEY), 404),
        (post("/api/v1/otp/verify", b"", API_KEY, length=50_000_000), 413),
    ):
        answers, closed = exchange(api.port, request)
        assert [s for s, _ in answers] == [status]
        assert answers[0][1].get("connection", "").lower() == "close" and closed, (status, answers)


def test_a_post_whose_body_was_read_keeps_the_connection(api):
    """A request answered after its body was read (here: valid JSON, an unknown device) leaves the connection
    open for the next one: only the early refusals close it."""
    answers, closed = exchange(api.port, post("/api/v1/otp/verify", VERIFY, API_KEY) + HEALTH, timeout=1)
    assert [status for status, _ in answers] == [404, 200] and not closed
    assert all(headers.get("connection", "").lower() != "close" for _, headers in answers)
    assert json.loads(VERIFY)  # the body the first request sent was a whole JSON object
