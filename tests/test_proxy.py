"""The reverse proxy against real upstreams: uvicorn servers in threads on loopback ports.

Streaming is proven by lock-step exchanges (the far side waits for the first
chunk before the near side sends the rest), never by timing.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import ipaddress
import json
import logging
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pullstats_middleware import PullMetrics, PullStatsASGIMiddleware, PullStatsConfig
from pullstats_middleware.demo_registry import MemoryRegistry, starlette_app
from pullstats_middleware.proxy import RegistryProxy, build_proxy, check_upstream, proxy_app
from pullstats_middleware.proxy.headers import host_header
from pullstats_middleware.store import MemoryStore

MB = 1024 * 1024
_BLOCK = random.Random(7).randbytes(MB + 7)  # not a power of two: chunk edges never align


def pattern(size: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
    """`size` deterministic bytes in `chunk`-sized pieces, generated on the fly."""
    sent = 0
    while sent < size:
        start = sent % len(_BLOCK)
        piece = _BLOCK[start : start + min(chunk, size - sent)]
        sent += len(piece)
        yield piece


def sha256_of(chunks: Iterator[bytes]) -> str:
    digest = hashlib.sha256()
    for piece in chunks:
        digest.update(piece)
    return digest.hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """An ASGI app served by uvicorn in a thread on a free loopback port."""

    def __init__(self, app: Any, **options: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            lifespan="on",
            log_level="warning",
            proxy_headers=False,
            server_header=False,
            date_header=False,
            timeout_graceful_shutdown=5,
            **options,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


# -- the upstream ----------------------------------------------------------


class Upstream:
    """A registry-shaped test server that reports what reached it."""

    def __init__(self) -> None:
        self.first_chunk = threading.Event()
        self.release = threading.Event()
        self.released_in_time: bool | None = None
        self.endless_closed = threading.Event()
        self.upload_aborted = threading.Event()
        self.gzipped = gzip.compress(b"layer " * 10_000)
        self.app = Starlette(
            routes=[
                Route("/echo/{rest:path}", self.echo, methods=_METHODS),
                Route("/upload", self.upload, methods=["PUT", "POST", "PATCH"]),
                Route("/lockstep-upload", self.lockstep_upload, methods=["PUT", "POST"]),
                Route("/download/{size:int}", self.download, methods=["GET", "HEAD"]),
                Route("/lockstep-download", self.lockstep_download),
                Route("/endless", self.endless),
                Route("/gzip", self.gzip),
                Route("/location/{kind}", self.location, methods=["GET", "POST"]),
                Route("/v2/private/manifests/v1", self.auth),
                Route("/hop", self.hop),
                Route("/slow", self.slow),
                Route("/cookie", self.cookie),
            ]
        )

    async def echo(self, request: Request) -> Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.stream():
            digest.update(chunk)
            size += len(chunk)
        payload = {
            "method": request.method,
            "raw_path": request.scope["raw_path"].decode(),
            "query_string": request.scope["query_string"].decode(),
            "headers": [[k.decode(), v.decode()] for k, v in request.headers.raw],
            "size": size,
            "sha256": digest.hexdigest(),
        }
        if request.method == "HEAD":
            return Response(headers={"x-echo-method": "HEAD"})
        return JSONResponse(payload, headers={"x-echo-method": request.method})

    async def upload(self, request: Request) -> Response:
        return await self.echo(request)

    async def lockstep_upload(self, request: Request) -> Response:
        digest = hashlib.sha256()
        try:
            async for chunk in request.stream():
                self.first_chunk.set()
                digest.update(chunk)
        except ClientDisconnect:
            self.upload_aborted.set()
            return Response(status_code=400)
        return JSONResponse({"sha256": digest.hexdigest()})

    async def download(self, request: Request) -> Response:
        size = request.path_params["size"]
        headers = {"content-length": str(size), "content-type": "application/octet-stream"}
        if request.method == "HEAD":
            return Response(headers=headers)

        async def body() -> AsyncIterator[bytes]:
            for piece in pattern(size, MB):
                yield piece

        return StreamingResponse(body(), headers=headers)

    async def lockstep_download(self, request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"first chunk;"
            self.released_in_time = await asyncio.to_thread(self.release.wait, 20)
            yield b"second chunk"

        return StreamingResponse(body())

    async def endless(self, request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"x" * 65536
                    await asyncio.sleep(0.005)
            finally:
                self.endless_closed.set()

        return StreamingResponse(body())

    async def gzip(self, request: Request) -> Response:
        headers = {"content-encoding": "gzip", "content-type": "text/plain"}
        return Response(self.gzipped, headers=headers)

    async def location(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind == "absolute":  # what distribution sends without relativeurls
            url = f"http://{request.headers['host']}/v2/r/blobs/uploads/u1?_state=abc%3D"
        elif kind == "relative":
            url = "/v2/r/blobs/uploads/u2?_state=xyz%3D%3D"
        else:  # a redirect to blob storage elsewhere
            url = "https://storage.example.com/blob?sig=1"
        return Response(status_code=202, headers={"location": url})

    async def auth(self, request: Request) -> Response:
        challenge = (
            'Bearer realm="https://auth.example.com/token",service="registry",'
            'scope="repository:private:pull"'
        )
        return JSONResponse(
            {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
            status_code=401,
            headers={
                "www-authenticate": challenge,
                "docker-distribution-api-version": "registry/2.0",
            },
        )

    async def hop(self, request: Request) -> Response:
        response = Response(b"ok")
        response.raw_headers += [
            (b"connection", b"x-upstream-hop"),
            (b"x-upstream-hop", b"secret"),
            (b"keep-alive", b"timeout=5"),
            (b"proxy-authenticate", b'Basic realm="proxy"'),
            (b"trailer", b"x-checksum"),
            (b"upgrade", b"foo"),
            (b"x-kept", b"yes"),
        ]
        return response

    async def cookie(self, request: Request) -> Response:
        response = Response(b"ok")
        response.set_cookie("session", "secret-of-one-user")
        return response

    async def slow(self, request: Request) -> Response:
        for _ in range(200):
            if await request.is_disconnected():
                break
            await asyncio.sleep(0.05)
        return Response(b"late")


_METHODS = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"]


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[Upstream, Served]]:
    target = Upstream()
    with Served(target.app) as served:
        yield target, served


@pytest.fixture(scope="module")
def proxy(upstream: tuple[Upstream, Served]) -> Iterator[Served]:
    with Served(proxy_app(upstream[1].url)) as served:
        yield served


@pytest.fixture()
def client() -> Iterator[httpx2.Client]:
    with httpx2.Client(trust_env=False, timeout=60) as c:
        yield c


def echoed(response: httpx2.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    payload: dict[str, Any] = response.json()
    return payload


def header_names(payload: dict[str, Any]) -> set[str]:
    return {name for name, _ in payload["headers"]}


def header(payload: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in payload["headers"] if k == name]


# -- forwarding --------------------------------------------------------------


@pytest.mark.parametrize("method", _METHODS)
def test_every_method_is_forwarded(method: str, proxy: Served, client: httpx2.Client) -> None:
    response = client.request(method, f"{proxy.url}/echo/x?y=1")
    assert response.status_code == 200
    assert response.headers["x-echo-method"] == method
    if method != "HEAD":
        assert echoed(response)["method"] == method


def test_path_and_query_pass_unchanged(proxy: Served, client: httpx2.Client) -> None:
    url = f"{proxy.url}/echo/a%2Fb/c%20d?a=1&a=2&b=%2F%20x&_state=abc%3D%3D&empty="
    payload = echoed(client.get(url))
    assert payload["raw_path"] == "/echo/a%2Fb/c%20d"
    assert payload["query_string"] == "a=1&a=2&b=%2F%20x&_state=abc%3D%3D&empty="


def test_raw_target_bytes_pass_unchanged(proxy: Served) -> None:
    # httpx2 as a client would normalise these; a raw socket sends them as written.
    target = b"/echo/a/../b%2Fc%zz?x=%zz&y=a/../b"
    with socket.create_connection(("127.0.0.1", proxy.port)) as raw:
        raw.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    payload = json.loads(body)
    assert payload["raw_path"] == "/echo/a/../b%2Fc%zz"
    assert payload["query_string"] == "x=%zz&y=a/../b"


def test_large_chunked_upload_streams_exact_bytes(proxy: Served, client: httpx2.Client) -> None:
    size = 50 * MB
    payload = echoed(client.patch(f"{proxy.url}/upload", content=pattern(size)))
    assert payload["size"] == size
    assert payload["sha256"] == sha256_of(pattern(size))
    assert header(payload, "transfer-encoding") == ["chunked"]


def test_upload_with_content_length_keeps_it(proxy: Served, client: httpx2.Client) -> None:
    data = b"".join(pattern(3 * MB))
    payload = echoed(client.put(f"{proxy.url}/upload", content=data))
    assert payload["sha256"] == hashlib.sha256(data).hexdigest()
    assert header(payload, "content-length") == [str(len(data))]
    assert "transfer-encoding" not in header_names(payload)


def test_expect_continue_is_answered_by_the_proxy(proxy: Served, client: httpx2.Client) -> None:
    headers = {"expect": "100-continue"}
    payload = echoed(client.post(f"{proxy.url}/upload", content=b"abc" * 1000, headers=headers))
    assert payload["size"] == 3000
    assert "expect" not in header_names(payload)


def test_upload_is_streamed_not_buffered(
    upstream: tuple[Upstream, Served], proxy: Served, client: httpx2.Client
) -> None:
    target = upstream[0]
    target.first_chunk.clear()
    seen: list[bool] = []

    def body() -> Iterator[bytes]:
        yield b"a" * 65536
        # A buffering proxy would hold this chunk until the body ended: deadlock.
        seen.append(target.first_chunk.wait(20))
        yield b"b" * 65536

    response = client.put(f"{proxy.url}/lockstep-upload", content=body())
    assert response.status_code == 200
    assert seen == [True]
    assert response.json()["sha256"] == hashlib.sha256(b"a" * 65536 + b"b" * 65536).hexdigest()


def test_large_download_streams_exact_bytes(proxy: Served, client: httpx2.Client) -> None:
    size = 50 * MB
    digest, received = hashlib.sha256(), 0
    with client.stream("GET", f"{proxy.url}/download/{size}") as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == str(size)
        for chunk in response.iter_raw():
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.hexdigest() == sha256_of(pattern(size))


def test_download_is_streamed_not_buffered(
    upstream: tuple[Upstream, Served], proxy: Served, client: httpx2.Client
) -> None:
    target = upstream[0]
    target.release.clear()
    target.released_in_time = None
    with client.stream("GET", f"{proxy.url}/lockstep-download") as response:
        chunks = response.iter_raw()
        first = next(chunks)
        target.release.set()  # the upstream sends the rest only now
        rest = b"".join(chunks)
    assert (first + rest) == b"first chunk;second chunk"
    assert target.released_in_time is True


def test_head_keeps_content_length(proxy: Served, client: httpx2.Client) -> None:
    response = client.head(f"{proxy.url}/download/12345")
    assert response.status_code == 200
    assert response.headers["content-length"] == "12345"
    assert response.content == b""


@pytest.mark.parametrize("status", [204, 304])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_bodiless_statuses_pass_without_a_body_or_an_error(
    client: httpx2.Client, caplog: pytest.LogCaptureFixture, status: int, method: str
) -> None:
    async def bodiless(scope: Any, receive: Any, send: Any) -> None:
        """A 304 or 204 that names the length of the body it does not send (h11 serves
        it as a registry would; uvicorn's httptools server would refuse it)."""
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] == "http":
            headers = [(b"content-length", b"10"), (b"etag", b'"v1"')]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b""})

    with (
        Served(bodiless, http="h11") as upstream,
        Served(proxy_app(upstream.url)) as proxy,
        caplog.at_level(logging.WARNING),
    ):
        response = client.request(method, f"{proxy.url}/v2/")
        again = client.request(method, f"{proxy.url}/v2/")  # the connection lives on
    assert response.status_code == again.status_code == status
    assert response.content == b"" and response.headers["etag"] == '"v1"'
    assert "content-length" not in response.headers
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_compressed_bytes_pass_raw(
    upstream: tuple[Upstream, Served], proxy: Served, client: httpx2.Client
) -> None:
    headers = {"accept-encoding": "gzip"}
    with client.stream("GET", f"{proxy.url}/gzip", headers=headers) as response:
        raw = b"".join(response.iter_raw())
        assert response.headers["content-encoding"] == "gzip"
        assert response.headers["content-length"] == str(len(upstream[0].gzipped))
    assert raw == upstream[0].gzipped


def test_client_disconnect_closes_the_upstream_response(
    upstream: tuple[Upstream, Served], proxy: Served, client: httpx2.Client
) -> None:
    target = upstream[0]
    target.endless_closed.clear()
    with client.stream("GET", f"{proxy.url}/endless") as response:
        assert next(response.iter_raw())
    # Closing an unfinished response drops the connection; the proxy must stop reading.
    assert target.endless_closed.wait(20)
    assert client.get(f"{proxy.url}/echo/after").status_code == 200


def test_client_disconnect_during_upload_aborts_upstream(
    upstream: tuple[Upstream, Served], proxy: Served, client: httpx2.Client
) -> None:
    target = upstream[0]
    target.upload_aborted.clear()
    target.first_chunk.clear()
    with socket.create_connection(("127.0.0.1", proxy.port)) as raw:
        raw.sendall(
            b"PUT /lockstep-upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
            + b"z" * 100_000
        )
        assert target.first_chunk.wait(20)
    assert target.upload_aborted.wait(20)
    assert client.get(f"{proxy.url}/echo/after").status_code == 200


# -- headers -------------------------------------------------------------------


def test_hop_by_hop_request_headers_dropped_and_forwarded_headers_added(
    upstream: tuple[Upstream, Served], proxy: Served, client: httpx2.Client
) -> None:
    headers = [
        ("connection", "keep-alive, X-Client-Hop"),
        ("x-client-hop", "1"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("trailer", "x-checksum"),
        ("upgrade", "foo"),
        ("proxy-authorization", "Basic cHJveHk6cHc="),
        ("authorization", "Bearer token"),
        ("x-forwarded-for", "203.0.113.9"),
        ("x-kept", "yes"),
    ]
    payload = echoed(client.get(f"{proxy.url}/echo/h", headers=headers))
    names = header_names(payload)
    for dropped in ("connection", "x-client-hop", "keep-alive", "te", "trailer", "upgrade"):
        assert dropped not in names
    assert "proxy-authorization" not in names
    assert header(payload, "host") == [f"127.0.0.1:{upstream[1].port}"]
    assert header(payload, "authorization") == ["Bearer token"]
    assert header(payload, "x-kept") == ["yes"]
    assert header(payload, "x-forwarded-for") == ["203.0.113.9, 127.0.0.1"]
    assert header(payload, "x-forwarded-proto") == ["http"]
    assert header(payload, "x-forwarded-host") == [f"127.0.0.1:{proxy.port}"]


@pytest.fixture(scope="module")
def behind_tls(upstream: tuple[Upstream, Served]) -> Iterator[Served]:
    """A proxy that trusts its loopback peer, as it would a balancer that ends TLS."""
    trusted = [ipaddress.ip_network("127.0.0.0/8")]
    with Served(proxy_app(upstream[1].url, trusted_proxies=trusted)) as served:
        yield served


BALANCER = {"x-forwarded-proto": "https", "x-forwarded-host": "registry.example.com"}


def test_a_trusted_peer_names_the_scheme_and_host_the_client_used(
    behind_tls: Served, client: httpx2.Client
) -> None:
    payload = echoed(client.get(f"{behind_tls.url}/echo/h", headers=BALANCER))
    assert header(payload, "x-forwarded-proto") == ["https"]
    assert header(payload, "x-forwarded-host") == ["registry.example.com"]
    moved = client.post(f"{behind_tls.url}/location/absolute", headers=BALANCER)
    assert moved.headers["location"] == (
        "https://registry.example.com/v2/r/blobs/uploads/u1?_state=abc%3D"
    )
    # A list (hops that appended): the last, the one the peer saw or set.
    listed = {"x-forwarded-proto": "http, https", "x-forwarded-host": "a.example, b.example"}
    payload = echoed(client.get(f"{behind_tls.url}/echo/h", headers=listed))
    assert header(payload, "x-forwarded-proto") == ["https"]
    assert header(payload, "x-forwarded-host") == ["b.example"]


@pytest.mark.parametrize(
    ("proto", "host"), [("ftp", "evil.example/path"), ("javascript", "user@evil.example"), ("", "")]
)
def test_a_trusted_peer_s_nonsense_is_replaced_by_this_hop_s_own(
    proto: str, host: str, behind_tls: Served, client: httpx2.Client
) -> None:
    headers = {"x-forwarded-proto": proto, "x-forwarded-host": host}
    payload = echoed(client.get(f"{behind_tls.url}/echo/h", headers=headers))
    assert header(payload, "x-forwarded-proto") == ["http"]
    assert header(payload, "x-forwarded-host") == [f"127.0.0.1:{behind_tls.port}"]


def test_an_untrusted_client_cannot_name_the_scheme_or_host(
    proxy: Served, client: httpx2.Client
) -> None:
    payload = echoed(client.get(f"{proxy.url}/echo/h", headers=BALANCER))
    assert header(payload, "x-forwarded-proto") == ["http"]
    assert header(payload, "x-forwarded-host") == [f"127.0.0.1:{proxy.port}"]
    moved = client.post(f"{proxy.url}/location/absolute", headers=BALANCER)
    assert moved.headers["location"].startswith(f"{proxy.url}/v2/r/blobs/uploads/u1")


def test_hop_by_hop_response_headers_dropped(proxy: Served, client: httpx2.Client) -> None:
    response = client.get(f"{proxy.url}/hop")
    assert response.status_code == 200
    for dropped in ("x-upstream-hop", "keep-alive", "proxy-authenticate", "trailer", "upgrade"):
        assert dropped not in response.headers
    assert response.headers.get("connection") != "x-upstream-hop"
    assert response.headers["x-kept"] == "yes"


def test_absolute_location_naming_upstream_is_rewritten(
    proxy: Served, client: httpx2.Client
) -> None:
    response = client.post(f"{proxy.url}/location/absolute")
    assert response.status_code == 202
    assert response.headers["location"] == f"{proxy.url}/v2/r/blobs/uploads/u1?_state=abc%3D"


def test_location_uses_the_host_the_client_asked_for(proxy: Served, client: httpx2.Client) -> None:
    response = client.post(
        f"{proxy.url}/location/absolute", headers={"host": "registry.example.com:8443"}
    )
    assert response.headers["location"] == (
        "http://registry.example.com:8443/v2/r/blobs/uploads/u1?_state=abc%3D"
    )


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("relative", "/v2/r/blobs/uploads/u2?_state=xyz%3D%3D"),
        ("elsewhere", "https://storage.example.com/blob?sig=1"),
    ],
)
def test_other_locations_pass_unchanged(
    kind: str, expected: str, proxy: Served, client: httpx2.Client
) -> None:
    assert client.get(f"{proxy.url}/location/{kind}").headers["location"] == expected


def test_auth_challenge_passes_through(proxy: Served, client: httpx2.Client) -> None:
    response = client.get(f"{proxy.url}/v2/private/manifests/v1")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == (
        'Bearer realm="https://auth.example.com/token",service="registry",'
        'scope="repository:private:pull"'
    )
    assert response.headers["docker-distribution-api-version"] == "registry/2.0"
    assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"


def test_cookies_pass_through_and_are_never_kept(
    upstream: tuple[Upstream, Served], client: httpx2.Client
) -> None:
    app = proxy_app(upstream[1].url)
    with Served(app) as proxied:
        first = client.get(f"{proxied.url}/cookie")
        assert first.headers["set-cookie"].startswith("session=secret-of-one-user")
        client.cookies.clear()
        later = echoed(client.get(f"{proxied.url}/echo/next"))
        assert "cookie" not in header_names(later)


def test_concurrent_downloads(proxy: Served) -> None:
    size = 2 * MB
    expected = sha256_of(pattern(size))
    results: list[str] = []

    def fetch() -> None:
        with httpx2.Client(trust_env=False, timeout=60) as own:
            results.append(
                hashlib.sha256(own.get(f"{proxy.url}/download/{size}").content).hexdigest()
            )

    threads = [threading.Thread(target=fetch) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [expected] * 16


# -- failures --------------------------------------------------------------------


def assert_unavailable(response: httpx2.Response, status: int) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    errors = response.json()["errors"]
    assert errors[0]["code"] == "UNAVAILABLE"
    assert errors[0]["message"]
    assert "detail" in errors[0]


def test_upstream_down_is_502(client: httpx2.Client) -> None:
    with Served(proxy_app(f"http://127.0.0.1:{free_port()}", connect_timeout=5)) as down:
        assert_unavailable(client.get(f"{down.url}/v2/"), 502)
        assert_unavailable(client.put(f"{down.url}/upload", content=b"x" * 1000), 502)


def test_slow_upstream_is_504(upstream: tuple[Upstream, Served], client: httpx2.Client) -> None:
    with Served(proxy_app(upstream[1].url, read_timeout=0.3)) as impatient:
        assert_unavailable(client.get(f"{impatient.url}/slow"), 504)
        assert client.get(f"{impatient.url}/echo/fast").status_code == 200


@pytest.mark.parametrize(
    "url",
    [
        "ftp://registry:5000",
        "registry:5000",
        "http://",
        "http://registry:notaport",
        "http://registry:5000/prefix",
        "http://user:pw@registry:5000",
    ],
)
def test_bad_upstream_urls_are_rejected(url: str) -> None:
    with pytest.raises(ValueError, match="upstream URL"):
        check_upstream(url)


def test_good_upstream_urls_are_normalised() -> None:
    assert check_upstream("http://registry:5000/") == "http://registry:5000"
    assert check_upstream(" https://[::1]:5000 ") == "https://[::1]:5000"


@pytest.mark.parametrize(
    ("upstream", "host"),
    [
        ("http://registry:5000", b"registry:5000"),
        ("http://registry:80", b"registry"),  # the scheme's default port is left out
        ("https://registry:443", b"registry"),
        ("https://registry:80", b"registry:80"),
        ("https://[::1]:5000", b"[::1]:5000"),
        ("http://Bücher.Example", b"xn--bcher-kva.example"),  # IDNA, as on the wire
    ],
)
def test_the_upstream_gets_the_host_it_expects(upstream: str, host: bytes) -> None:
    assert host_header(check_upstream(upstream)) == host


# -- lifespan and statistics ---------------------------------------------------


def test_lifespan_through_the_middleware_opens_and_closes_the_client() -> None:
    config = PullStatsConfig(enabled=True, flush_interval=0.05)
    metrics = PullMetrics(config, store=MemoryStore())
    app = build_proxy("http://127.0.0.1:5000", config, metrics=metrics)
    assert isinstance(app, PullStatsASGIMiddleware)
    inner = app.app
    assert isinstance(inner, RegistryProxy)
    sent: list[str] = []

    async def run() -> None:
        messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

        async def receive() -> dict[str, Any]:
            return next(messages)

        async def send(message: Any) -> None:
            sent.append(message["type"])
            if message["type"] == "lifespan.startup.complete":
                assert inner._pool is not None  # the pool exists before the first request

        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)

    asyncio.run(run())
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert inner._pool is None  # closed and dropped; a later request makes a new one
    assert metrics._closed  # the middleware flushed at shutdown


def test_manifest_pull_through_build_proxy_is_counted(client: httpx2.Client) -> None:
    registry = MemoryRegistry()
    digest = registry.push_image("library/hello", "v1")
    config = PullStatsConfig(enabled=True, flush_interval=0.05)
    metrics = PullMetrics(config, store=MemoryStore())
    try:
        with (
            Served(starlette_app(registry)) as registry_server,
            Served(build_proxy(registry_server.url, config, metrics=metrics)) as proxied,
        ):
            base = f"{proxied.url}/v2/library/hello/manifests"
            pulled = client.get(f"{base}/v1")
            assert pulled.status_code == 200
            assert pulled.headers["docker-content-digest"] == digest
            assert client.head(f"{base}/v1").status_code == 200  # a check, not a pull
            assert client.get(f"{proxied.url}/v2/library/hello/manifests/nope").status_code == 404
            assert metrics.flush(5)
            stats = metrics.get_tag_statistics("library/hello", "v1")
            assert stats["tag_pull_count"] == 1
            assert stats["current_manifest_digest"] == digest
            assert stats["manifest_pull_count"] == 1

            # The statistics route asks the registry, through the proxy, for permission.
            route = f"{proxied.url}/api/v1/repository/library/hello/tag/v1/pull_statistics"
            answer = client.get(route)
            assert answer.status_code == 200, answer.text
            assert answer.json()["tag_pull_count"] == 1
            assert answer.json()["current_manifest_digest"] == digest
            missing = client.get(route.replace("/v1/pull", "/v9/pull"))
            assert missing.status_code == 404
    finally:
        metrics.close()
