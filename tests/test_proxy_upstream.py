"""The proxy against upstreams that misbehave or speak TLS: real sockets on loopback.

An upstream that breaks off a small answer (read whole before it is sent on)
is a clean 502; one that breaks off a large, streamed answer leaves the
client's response truncated; an HTTPS upstream is trusted through the system
store, which SSL_CERT_FILE extends.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pullstats_middleware.proxy import proxy_app
from tests.test_proxy import Served, assert_unavailable

MB = 1024 * 1024


class CutShort:
    """An upstream that announces `length` bytes, sends `sent` of them, and hangs up."""

    def __init__(self, length: int, sent: int) -> None:
        self.head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % length
        self.sent = sent
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.answered = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(65536)
                conn.sendall(self.head + b"x" * self.sent)
                self.answered += 1

    def close(self) -> None:
        self.server.close()


@pytest.fixture()
def client() -> Iterator[httpx2.Client]:
    with httpx2.Client(trust_env=False, timeout=30) as c:
        yield c


def test_small_answer_cut_short_is_502(client: httpx2.Client) -> None:
    upstream = CutShort(length=1000, sent=10)
    try:
        with Served(proxy_app(upstream.url)) as proxy:
            response = client.get(f"{proxy.url}/v2/r/manifests/v1")
            assert_unavailable(response, 502)
            assert "broke off" in response.json()["errors"][0]["message"]
            assert upstream.answered == 1
    finally:
        upstream.close()


def test_large_answer_cut_short_truncates_the_response(client: httpx2.Client) -> None:
    upstream = CutShort(length=10 * MB, sent=MB)
    try:
        with Served(proxy_app(upstream.url)) as proxy:
            received = 0
            with (
                pytest.raises(httpx2.TransportError),
                client.stream("GET", f"{proxy.url}/v2/r/blobs/sha256:x") as response,
            ):
                assert response.status_code == 200
                assert response.headers["content-length"] == str(10 * MB)
                for chunk in response.iter_raw():
                    received += len(chunk)
            assert received <= MB  # what came, and not a byte more: the client can tell
            assert upstream.answered == 1
    finally:
        upstream.close()


def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_upstream_trusted_through_ssl_cert_file(
    tmp_path: Path, client: httpx2.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = certificate(tmp_path)

    async def hello(request: Request) -> Response:
        return Response(b"over TLS " + request.headers["host"].encode())

    app = Starlette(routes=[Route("/v2/", hello)])
    with Served(app, ssl_certfile=str(cert), ssl_keyfile=str(key)) as upstream:
        https = upstream.url.replace("http://", "https://")
        with Served(proxy_app(https)) as untrusting:  # the CA is not in the system store
            assert_unavailable(client.get(f"{untrusting.url}/v2/"), 502)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        with Served(proxy_app(https)) as trusting:
            response = client.get(f"{trusting.url}/v2/")
            assert response.status_code == 200
            assert response.content == f"over TLS 127.0.0.1:{upstream.port}".encode()


def test_an_upload_slower_than_the_read_timeout_passes(client: httpx2.Client) -> None:
    """The read timeout is the upstream's silence after the request; an upload is paced
    by its client, however long it takes."""
    received: list[int] = []

    async def take(request: Request) -> Response:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        received.append(size)
        return Response(b"%d" % size, status_code=201)

    def slowly() -> Iterator[bytes]:
        for _ in range(8):
            time.sleep(0.1)  # 0.8 s in all, four times the read timeout
            yield b"y" * 65536

    app = Starlette(routes=[Route("/v2/r/blobs/uploads/u", take, methods=["PUT"])])
    with Served(app) as upstream, Served(proxy_app(upstream.url, read_timeout=0.2)) as proxy:
        response = client.put(f"{proxy.url}/v2/r/blobs/uploads/u", content=slowly())
    assert response.status_code == 201, response.text
    assert received == [8 * 65536]
