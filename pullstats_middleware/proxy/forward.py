"""The reverse proxy behind `pullstats proxy`: pull statistics for a registry in any language.

    app = build_proxy("http://registry:5000", PullStatsConfig(enabled=True))

Every request goes to the upstream unchanged except for what a well-behaved
HTTP intermediary must change (hop-by-hop headers, Host, X-Forwarded-*, a
Location naming the upstream). Bodies stream in both directions in constant
memory, so multi-GB blob uploads and downloads pass as they would directly.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterator
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_from_bytes, urlsplit

import anyio
import httpx2

from pullstats_middleware.asgi import PullStatsASGIMiddleware
from pullstats_middleware.config import PullStatsConfig
from pullstats_middleware.metrics import PullMetrics
from pullstats_middleware.proxy.headers import (
    check_upstream,
    origin,
    request_headers,
    response_headers,
)

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("pullstats_middleware")

_NO_CONTENT = frozenset((204, 304))
_READ_BYTES = 1 << 20  # upstream socket reads, see _read_bigger_chunks
_URL_SAFE = bytes(range(0x21, 0x7F)).decode().replace("#", "")
# No cookie jar: the shared client must never keep one user's Set-Cookie for another.
_NO_COOKIES = CookieJar(DefaultCookiePolicy(allowed_domains=[]))


class _ClientGone(Exception):
    """The downstream client disconnected while uploading."""


class RegistryProxy:
    """A plain ASGI app that forwards every request to one upstream registry."""

    def __init__(
        self,
        upstream: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        client: httpx2.AsyncClient | None = None,
    ) -> None:
        if not connect_timeout > 0 or not read_timeout > 0:
            raise ValueError("connect_timeout and read_timeout must be positive numbers of seconds")
        self.upstream = check_upstream(upstream)
        self._host = httpx2.URL(self.upstream).netloc  # IDNA-encoded, with the port
        self._origin = origin(urlsplit(self.upstream))
        # read/write/pool waits get the read timeout; only connecting is short.
        self._timeout = httpx2.Timeout(read_timeout, connect=connect_timeout)
        self._client = client
        self._owns_client = client is None

    @property
    def client(self) -> httpx2.AsyncClient:
        # Lazily, for servers that skip lifespan; one client (one pool) for all requests.
        if self._client is None:
            _read_bigger_chunks()
            self._client = httpx2.AsyncClient(
                follow_redirects=False,
                timeout=self._timeout,
                limits=httpx2.Limits(
                    max_connections=1000, max_keepalive_connections=100, keepalive_expiry=30.0
                ),
                # The system trust store (honours SSL_CERT_FILE/SSL_CERT_DIR), where
                # operators put the CA of a private registry; no HTTP(S)_PROXY detour.
                verify=ssl.create_default_context(),
                trust_env=False,
                cookies=_NO_COOKIES,
            )
        return self._client

    async def aclose(self) -> None:
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._forward(scope, receive, send)
        elif scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.client  # noqa: B018 -- create the pool before the first request
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "websocket":  # the distribution API has none
            await receive()
            await send({"type": "websocket.close", "code": 1003})

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers, has_body = request_headers(scope, self._host)
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        body = _Body(receive)
        request = httpx2.Request(
            scope["method"],
            self.upstream + quote_from_bytes(target, safe=_URL_SAFE),
            headers=headers,
            content=body if has_body else None,
            # The exact bytes on the wire: a URL would drop dot segments and re-encode.
            extensions={"timeout": self._timeout.as_dict(), "target": target},
        )
        try:
            response = await self.client.send(request, stream=True)
        except _ClientGone:
            return
        except httpx2.TimeoutException as exc:
            await self._unavailable(send, 504, "the upstream registry did not answer in time", exc)
            return
        except httpx2.TransportError as exc:
            unreachable = isinstance(exc, httpx2.ConnectError)
            why = "is unreachable" if unreachable else "broke off the exchange"
            await self._unavailable(send, 502, f"the upstream registry {why}", exc)
            return
        try:
            await self._relay(response, scope, receive, send, body.done)
        finally:
            await response.aclose()  # also after a downstream disconnect: frees the connection

    async def _relay(
        self, response: httpx2.Response, scope: Scope, receive: Receive, send: Send, done: bool
    ) -> None:
        failure: Exception | None = None
        async with anyio.create_task_group() as tasks:
            # Servers such as uvicorn silently drop sends to a closed connection;
            # only `receive` tells us, and then the upstream must stop too.
            tasks.start_soon(_cancel_on_disconnect, receive, tasks.cancel_scope, done)
            try:
                await self._stream(response, scope, send)
            except Exception as exc:  # re-raised below as itself, not as an ExceptionGroup
                failure = exc
            tasks.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _stream(self, response: httpx2.Response, scope: Scope, send: Send) -> None:
        status = response.status_code
        headers = response_headers(response.headers.raw, scope, self._origin)
        if status < 200 or status in _NO_CONTENT:
            # No body, ever (RFC 9110 §6.4.1): a Content-Length here would make the
            # server wait for bytes that never come (uvicorn raises on a 304).
            headers = [(name, value) for name, value in headers if name != b"content-length"]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if status < 200 or status in _NO_CONTENT or scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        try:
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx2.TransportError as exc:
            # Too late for a 502: leave the response incomplete so the server
            # closes the connection and the client sees a truncated body.
            log.warning("pullstats proxy: upstream response broke off (%r)", exc)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _unavailable(self, send: Send, status: int, message: str, exc: Exception) -> None:
        log.warning("pullstats proxy: %s: %s (%r)", self.upstream, message, exc)
        # The registry error shape clients already print; the address stays in our log.
        error = {"code": "UNAVAILABLE", "message": message, "detail": {"error": type(exc).__name__}}
        body = json.dumps({"errors": [error]}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _Body:
    """The request body as `receive()` delivers it, one message at a time."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while not self.done:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            self.done = not message.get("more_body", False)
            if message.get("body"):
                yield message["body"]


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope, done: bool) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return
        if not message.get("more_body", False):
            if done:
                # A second end-of-body: an in-process caller whose receive never
                # blocks (the statistics probe). Nothing to watch; do not spin.
                return
            done = True


def _read_bigger_chunks() -> None:
    """Let httpcore read up to 1 MiB per socket read instead of 64 KiB.

    A blob streams through Python once per read; with 16x fewer iterations the
    proxy moves about a third more bytes per second (benchmarks/bench_proxy.py).
    It is a buffer size, not a hold: a read returns what the socket has. The
    attribute is httpcore's own class setting; if it ever goes, we read 64 KiB.
    """
    try:
        from httpcore2._async.http11 import AsyncHTTP11Connection
    except ImportError:
        return
    if getattr(AsyncHTTP11Connection, "READ_NUM_BYTES", 0) < _READ_BYTES:
        AsyncHTTP11Connection.READ_NUM_BYTES = _READ_BYTES


def proxy_app(
    upstream: str,
    *,
    connect_timeout: float = 5.0,
    read_timeout: float = 60.0,
    client: httpx2.AsyncClient | None = None,
) -> RegistryProxy:
    """An ASGI app forwarding every request to `upstream` (`http(s)://host[:port]`)."""
    return RegistryProxy(
        upstream, connect_timeout=connect_timeout, read_timeout=read_timeout, client=client
    )


def build_proxy(
    upstream: str,
    config: PullStatsConfig,
    *,
    metrics: PullMetrics | None = None,
    **timeouts: Any,
) -> ASGIApp:
    """The proxy wrapped by the statistics middleware: what `pullstats proxy` serves."""
    return PullStatsASGIMiddleware(proxy_app(upstream, **timeouts), config=config, metrics=metrics)
