"""The proxy's upstream connections against a scripted HTTP/1.1 server on a real socket:
keep-alive and reuse, a connection the upstream closed unseen, an answer before the
upload ended, bodies framed by the close, informational answers, malformed ones.

Every test asserts what the upstream saw: how many connections, which requests on
each, so a fault the test means to cause is known to have happened.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator

import httpx2
import pytest

from pullstats_middleware.proxy import proxy_app
from pullstats_middleware.proxy.connection import Connection, UpstreamTimeout
from pullstats_middleware.proxy.upstream import UpstreamPool
from tests.test_proxy import Served, assert_unavailable

MB = 1024 * 1024

# (connection number from 0, request number on it from 0, request head) -> the bytes to
# send, or None to hang up without answering.
Script = Callable[[int, int, bytes], bytes | None]


def ok(body: bytes = b"ok", *, close: bool = False) -> bytes:
    connection = b"connection: close\r\n" if close else b""
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), connection, body)


class Scripted:
    """An upstream whose every answer a test writes; it records what it was asked."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.connections = 0
        self.requests: list[tuple[int, int, bytes]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            number, self.connections = self.connections, self.connections + 1
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        with conn:
            buffer, count = b"", 0
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                self.requests.append((number, count, head))
                reply = self.script(number, count, head)
                if reply is None:
                    return
                if b"connection: close" in reply.lower():
                    # Answered before reading any body; a lingering close, as servers do,
                    # so the answer is not lost to a reset.
                    conn.sendall(reply)
                    conn.shutdown(socket.SHUT_WR)
                    while conn.recv(65536):
                        pass
                    return
                length = _content_length(head)
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                buffer = buffer[length:]
                conn.sendall(reply)
                count += 1

    def methods(self) -> list[tuple[int, int, bytes]]:
        return [(number, count, head.split(b" ", 1)[0]) for number, count, head in self.requests]

    def close(self) -> None:
        self.server.close()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@pytest.fixture()
def client() -> Iterator[httpx2.Client]:
    with httpx2.Client(trust_env=False, timeout=30) as c:
        yield c


def served(script: Script) -> Iterator[tuple[Scripted, Served]]:
    upstream = Scripted(script)
    try:
        with Served(proxy_app(upstream.url, read_timeout=10)) as proxy:
            yield upstream, proxy
    finally:
        upstream.close()


def test_one_connection_carries_every_request_in_turn(client: httpx2.Client) -> None:
    for upstream, proxy in served(lambda n, i, head: ok(b"answer %d" % i)):
        for i in range(10):
            assert client.get(f"{proxy.url}/v2/r/manifests/v{i}").content == b"answer %d" % (2 * i)
            # A HEAD's Content-Length names a body that never comes: the next answer
            # on the connection must not be read as that body.
            assert client.head(f"{proxy.url}/v2/r/manifests/v{i}").status_code == 200
        assert upstream.connections == 1
        assert [count for _, count, _ in upstream.requests] == list(range(20))


def test_a_get_on_a_connection_the_upstream_closed_unseen_goes_again(
    client: httpx2.Client,
) -> None:
    # The upstream hangs up on the second request of its first connection, as a server
    # closing an idle connection at the moment the request arrives does.
    for upstream, proxy in served(lambda n, i, head: None if (n, i) == (0, 1) else ok()):
        assert client.get(f"{proxy.url}/v2/a").status_code == 200
        assert client.get(f"{proxy.url}/v2/b").status_code == 200
        assert upstream.methods() == [(0, 0, b"GET"), (0, 1, b"GET"), (1, 0, b"GET")]


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_request_that_is_not_idempotent_is_never_sent_twice(
    client: httpx2.Client, method: str
) -> None:
    for upstream, proxy in served(lambda n, i, head: None if (n, i) == (0, 1) else ok()):
        assert client.get(f"{proxy.url}/v2/a").status_code == 200
        assert_unavailable(client.request(method, f"{proxy.url}/v2/r/blobs/uploads/"), 502)
        assert upstream.methods() == [(0, 0, b"GET"), (0, 1, method.encode())]


def test_an_upload_is_never_sent_twice(client: httpx2.Client) -> None:
    for upstream, proxy in served(lambda n, i, head: None if (n, i) == (0, 1) else ok()):
        assert client.get(f"{proxy.url}/v2/a").status_code == 200
        response = client.put(f"{proxy.url}/v2/r/blobs/uploads/u", content=b"x" * 1000)
        assert_unavailable(response, 502)
        assert upstream.methods() == [(0, 0, b"GET"), (0, 1, b"PUT")]


def test_an_answer_before_the_upload_ended_is_passed_on() -> None:
    too_large = (
        b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\nconnection: close\r\n\r\nno!"
    )
    for upstream, proxy in served(lambda n, i, head: too_large):
        with socket.create_connection(("127.0.0.1", proxy.port)) as raw:
            raw.sendall(
                b"PUT /v2/r/blobs/uploads/u HTTP/1.1\r\nHost: p\r\nContent-Length: 50000000\r\n\r\n"
                + b"z" * 200_000
            )
            answer = b""
            while b"no!" not in answer and (chunk := raw.recv(65536)):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 413 "), answer
        assert upstream.methods() == [(0, 0, b"PUT")]


def test_a_connection_the_upstream_closes_is_not_kept(client: httpx2.Client) -> None:
    for upstream, proxy in served(lambda n, i, head: ok(close=True)):
        for _ in range(3):
            assert client.get(f"{proxy.url}/v2/").content == b"ok"
        assert upstream.methods() == [(0, 0, b"GET"), (1, 0, b"GET"), (2, 0, b"GET")]


def test_a_body_ended_by_the_close_passes_whole(client: httpx2.Client) -> None:
    body = bytes(range(256)) * 1200  # 300 KiB: more than an answer read whole
    framed_by_close = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + body
    for upstream, proxy in served(lambda n, i, head: framed_by_close):
        assert client.get(f"{proxy.url}/v2/r/blobs/sha256:x").content == body
        assert upstream.connections == 1


def test_informational_answers_are_skipped(client: httpx2.Client) -> None:
    early = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n"
    for upstream, proxy in served(lambda n, i, head: early + ok(b"the answer")):
        response = client.get(f"{proxy.url}/v2/")
        assert response.status_code == 200 and response.content == b"the answer"
        assert "link" not in response.headers
        assert upstream.connections == 1


@pytest.mark.parametrize(
    "garbage",
    [
        b"HTTP/1.1 abc\r\n\r\n",
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
    ],
)
def test_a_malformed_answer_is_502(client: httpx2.Client, garbage: bytes) -> None:
    for upstream, proxy in served(lambda n, i, head: garbage):
        response = client.get(f"{proxy.url}/v2/")
        assert_unavailable(response, 502)
        assert "broke off" in response.json()["errors"][0]["message"]
        assert upstream.methods() == [(0, 0, b"GET")]


def test_connections_idle_past_the_keepalive_are_closed_not_reused() -> None:
    upstream = Scripted(lambda n, i, head: ok())

    async def run() -> None:
        pool = UpstreamPool(upstream.url, connect_timeout=5, read_timeout=5, keepalive=0.2)
        head = [(b"host", b"registry")]
        for pause in (0.0, 0.0, 0.5):  # the third request comes after the keep-alive
            await asyncio.sleep(pause)
            connection = await pool.request(b"GET", b"/v2/", head, None)
            assert await connection.read() == b"ok"
            pool.release(connection)
        await pool.aclose()

    try:
        asyncio.run(run())
        assert upstream.methods() == [(0, 0, b"GET"), (0, 1, b"GET"), (1, 0, b"GET")]
    finally:
        upstream.close()


class Transport:
    """What a Connection asks of its transport, recorded."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0
        self.closed = False
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def pause_reading(self) -> None:
        self.paused, self.pauses = True, self.pauses + 1

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.closed = True


def test_the_read_clock_runs_only_while_the_proxy_waits_for_the_upstream() -> None:
    """A slow client pauses reading from the upstream: that silence is the proxy's own
    doing and must not time out. Silence while the proxy waits for bytes must."""

    async def run() -> tuple[Transport, bytes, Transport]:
        loop = asyncio.get_running_loop()
        slow, transport = Connection(loop, read_timeout=0.05), Transport()
        slow.connection_made(transport)
        slow.begin(b"GET /v2/r/blobs/x HTTP/1.1\r\n\r\n", head_only=False)
        body = bytes(range(256)) * (10 * 1024)  # 2.5 MiB
        waiting = asyncio.ensure_future(slow.response())
        await asyncio.sleep(0.01)  # the proxy waits for the answer: the clock runs
        slow.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body))
        await waiting
        for at in range(0, 2 * MB, 64 * 1024):
            slow.data_received(body[at : at + 64 * 1024])
        assert transport.paused  # 2 MiB held for a client that takes nothing yet
        await asyncio.sleep(0.3)  # six read timeouts of the upstream's silence
        received, rest = bytearray(), body[2 * MB :]
        async for chunk in slow.chunks():
            received += chunk
            if rest and not transport.paused:  # the upstream sends again once resumed
                slow.data_received(rest)
                rest = b""
        silent, quiet = Connection(loop, read_timeout=0.05), Transport()
        silent.connection_made(quiet)
        silent.begin(b"GET /v2/ HTTP/1.1\r\n\r\n", head_only=False)
        with pytest.raises(UpstreamTimeout):
            await silent.response()
        return transport, bytes(received), quiet

    transport, received, quiet = asyncio.run(run())
    assert received == bytes(range(256)) * (10 * 1024)
    assert transport.pauses == 1 and not transport.closed
    assert quiet.closed  # the timed-out connection is dropped


def test_an_upstream_silent_mid_answer_times_out_and_the_response_is_cut(
    client: httpx2.Client,
) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    hung_up = threading.Event()

    def stall() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (4 * MB) + b"x" * MB)
            conn.settimeout(30)
            try:
                hung_up.set() if conn.recv(1) == b"" else None  # the proxy gave up on us
            except OSError:
                hung_up.set()

    threading.Thread(target=stall, daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    try:
        with Served(proxy_app(url, read_timeout=1.0)) as proxy:
            received = 0
            with (
                pytest.raises(httpx2.TransportError),
                client.stream("GET", f"{proxy.url}/v2/r/blobs/sha256:x") as response,
            ):
                assert response.status_code == 200
                for chunk in response.iter_raw():
                    received += len(chunk)
            assert received == MB  # all that came, and the client can tell it was cut
            assert hung_up.wait(10)
    finally:
        server.close()
