"""The load client's retry rule (tests/loadgen.py), against a scripted HTTP/1.1 server.

A request is sent again once only when it went out on a reused keep-alive connection that the
server closed before any byte of an answer; a fresh connection closed the same way, or an
answer that was cut off, is an error.
"""

from __future__ import annotations

import itertools
import socket
import threading
from collections.abc import Callable

import httpx
import pytest

from tests.loadgen import post_with_keepalive_retry

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def _read_request(conn: socket.socket) -> bool:
    """Read one request (headers and Content-Length body); False when the client closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n")
         if line.lower().startswith(b"content-length:")),
        0,
    )  # fmt: skip
    while len(body) < length:
        body += conn.recv(65536)
    return True


class Scripted:
    """A server whose n-th connection is handled by script[n] (called with the socket)."""

    def __init__(self, script: list[Callable[[socket.socket], None]]) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _serve(self) -> None:
        for handle in self.script:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                handle(conn)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


def answer(n: int, then_close_unanswered: bool) -> Callable[[socket.socket], None]:
    """Answer n requests with keep-alive; then, if asked, read one more and close silently."""

    def handle(conn: socket.socket) -> None:
        for _ in range(n):
            if not _read_request(conn):
                return
            conn.sendall(OK)
        if then_close_unanswered:
            _read_request(conn)

    return handle


def cut_off(conn: socket.socket) -> None:
    """Read a request, send half of the answer's headers, close."""
    _read_request(conn)
    conn.sendall(OK[:10])


@pytest.fixture
def serve():
    servers: list[Scripted] = []

    def start(*script: Callable[[socket.socket], None]) -> Scripted:
        servers.append(Scripted(list(script)))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_reused_connection_closed_before_an_answer_is_retried_once(serve) -> None:
    server = serve(answer(1, then_close_unanswered=True), answer(1, then_close_unanswered=False))
    with httpx.Client(base_url=server.url, timeout=5) as client:
        first, retried = post_with_keepalive_retry(client, "/predict", json={"s": 1})
        assert (first.status_code, retried) == (200, False)
        second, retried = post_with_keepalive_retry(client, "/predict", json={"s": 2})
        assert (second.status_code, retried) == (200, True)
    assert server.connections == 2


def test_fresh_connection_closed_before_an_answer_is_an_error(serve) -> None:
    server = serve(answer(0, then_close_unanswered=True))
    with (
        httpx.Client(base_url=server.url, timeout=5) as client,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        post_with_keepalive_retry(client, "/predict", json={"s": 1})
    assert server.connections == 1


def test_an_answer_cut_off_on_a_reused_connection_is_an_error(serve) -> None:
    server = serve(answer(1, then_close_unanswered=False), cut_off)
    with httpx.Client(base_url=server.url, timeout=5) as client:
        assert post_with_keepalive_retry(client, "/predict", json={"s": 1})[0].status_code == 200
        # the server closes the first connection after one answer: the client opens a new one,
        # which gets half an answer
        with pytest.raises(httpx.RemoteProtocolError):
            post_with_keepalive_retry(client, "/predict", json={"s": 2})


def test_a_second_close_after_the_retry_is_an_error(serve) -> None:
    server = serve(answer(1, then_close_unanswered=True), answer(0, then_close_unanswered=True))
    with httpx.Client(base_url=server.url, timeout=5) as client:
        assert post_with_keepalive_retry(client, "/predict", json={"s": 1})[0].status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            post_with_keepalive_retry(client, "/predict", json={"s": 2})
    assert server.connections == 2


def test_paced_load_never_bursts_to_catch_up_after_a_slow_answer(serve) -> None:
    """After an answer that took 1 s, the client does not send the requests it "missed" back to
    back (a rate limiter would refuse them): consecutive requests stay 1/rate apart."""
    import time

    from tests.loadgen import PacedLoad

    arrivals: list[float] = []

    def handle(conn: socket.socket) -> None:
        while _read_request(conn):
            arrivals.append(time.monotonic())
            if len(arrivals) == 3:
                time.sleep(1.0)  # the slow answer: 10 requests' worth at 10 r/s
            conn.sendall(OK)

    server = serve(handle)
    load = PacedLoad(server.url, ca=None, auth=("u", "p"), rate=10.0)
    load.start()
    deadline = time.monotonic() + 60  # a hang guard: ~2.2 s idle
    while len(arrivals) < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    load.stop()
    assert len(arrivals) >= 12, arrivals
    # Measured where it is decided, at the client (the server's clock adds its own scheduling
    # delays on a busy machine): each request goes out no sooner than 1/rate after the one
    # before (sleep never wakes early), the slow one included. A catch-up burst would show
    # about ten gaps of a millisecond right after the 1 s one.
    sent = load.sent_times
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert len(sent) >= 12 and max(gaps) >= 1.0, [round(g, 3) for g in gaps]
    assert min(gaps) >= 0.1 - 1e-6, [round(g, 3) for g in gaps]  # (float rounding)
    assert set(load.statuses) == {200} and load.failures == []
