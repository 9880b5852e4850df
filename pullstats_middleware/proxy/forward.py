"""The reverse proxy behind `pullstats proxy`: pull statistics for a registry in any language.

    app = build_proxy("http://registry:5000", PullStatsConfig(enabled=True))

Every request goes to the upstream unchanged except for what a well-behaved
HTTP intermediary must change (hop-by-hop headers, Host, X-Forwarded-*, a
Location naming the upstream). Bodies stream in both directions in constant
memory, so multi-GB blob uploads and downloads pass as they would directly.

The upstream client is the proxy's own pool of HTTP/1.1 connections, parsed by
httptools (proxy/upstream.py): measured against aiohttp, httpx2, pyreqwest and
aiosonic in front of the same registry, it costs about 60 % of their CPU per
manifest request (benchmarks/proxy_clients.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING
from urllib.parse import quote_from_bytes, urlsplit

import anyio

from pullstats_middleware.proxy.connection import (
    Connection,
    Unreachable,
    UpstreamError,
    UpstreamTimeout,
)
from pullstats_middleware.proxy.headers import (
    Public,
    check_upstream,
    host_header,
    origin,
    request_headers,
    response_headers,
)
from pullstats_middleware.proxy.upstream import UpstreamPool

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

    from pullstats_middleware.config import IPNetwork

log = logging.getLogger("pullstats_middleware")

_NO_CONTENT = frozenset((204, 304))
# Answers up to this size (manifests, errors, tag lists) are read whole and sent
# in one message: no watcher task, and an upstream failure is still a clean 502.
_WHOLE_BYTES = 256 * 1024
_URL_SAFE = bytes(range(0x21, 0x7F)).decode().replace("#", "")


class RegistryProxy:
    """A plain ASGI app that forwards every request to one upstream registry."""

    def __init__(
        self,
        upstream: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        trusted_proxies: Sequence[IPNetwork] = (),
    ) -> None:
        if not connect_timeout > 0 or not read_timeout > 0:
            raise ValueError("connect_timeout and read_timeout must be positive numbers of seconds")
        self.upstream = check_upstream(upstream)
        self._host = host_header(self.upstream)
        self._origin = origin(urlsplit(self.upstream))
        # Connecting is short; waiting for a pool slot or for the upstream's bytes gets the
        # read timeout. An upload is paced by its client: the read clock starts after it.
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._pool: UpstreamPool | None = None
        # Peers whose X-Forwarded-Proto and X-Forwarded-Host say where the client
        # reached them (PULL_METRICS_TRUSTED_PROXIES): a balancer that ends TLS.
        self._trusted = tuple(trusted_proxies)

    @property
    def pool(self) -> UpstreamPool:
        # Lazily, inside the event loop, for servers that skip lifespan; one pool for all.
        # It keeps no cookies and knows no HTTP(S)_PROXY: bytes pass as the upstream sent them.
        if self._pool is None:
            self._pool = UpstreamPool(
                self.upstream,
                connect_timeout=self._connect_timeout,
                read_timeout=self._read_timeout,
            )
        return self._pool

    async def aclose(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._forward(scope, receive, send)
        elif scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.pool  # noqa: B018 -- create the pool before the first request
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "websocket":  # the distribution API has none
            await receive()
            await send({"type": "websocket.close", "code": 1003})

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers, has_body, public = request_headers(scope, self._host, self._trusted)
        # The exact bytes on the wire: a parsed URL would drop dot segments and re-encode.
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        if not target.isascii() or b"#" in target:
            target = quote_from_bytes(target, safe=_URL_SAFE).encode()
        body = _Body(receive)
        pool = self.pool
        try:
            response = await pool.request(
                scope["method"].encode(), target, headers, body if has_body else None
            )
        except UpstreamTimeout as exc:
            await _unavailable(send, 504, "the upstream registry did not answer in time", exc)
            return
        except (UpstreamError, ConnectionAbortedError) as exc:
            if body.gone:
                return  # our client left mid-upload; nobody to answer
            why = "is unreachable" if isinstance(exc, Unreachable) else "broke off the exchange"
            await _unavailable(send, 502, f"the upstream registry {why}", exc)
            return
        try:
            # Watch for a disconnect only where no upload is still reading `receive`.
            watch = not has_body or body.done
            done = body.done if watch else None
            await self._answer(response, scope, public, receive, send, done)
        finally:
            pool.release(response)  # closes the connection unless the body was read to its end

    async def _answer(
        self,
        response: Connection,
        scope: Scope,
        public: Public,
        receive: Receive,
        send: Send,
        done: bool | None,
    ) -> None:
        status = response.status
        headers = response_headers(response.headers, scope, self._origin, public)
        bodiless = status < 200 or status in _NO_CONTENT
        if bodiless:
            # No body, ever (RFC 9110 §6.4.1): a Content-Length here would make the
            # server wait for bytes that never come (uvicorn raises on a 304).
            headers = [(name, value) for name, value in headers if name != b"content-length"]
        if bodiless or scope["method"] == "HEAD":
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        length = response.content_length
        if length is not None and length <= _WHOLE_BYTES:
            try:
                whole = await response.read()
            except UpstreamError as exc:
                await _unavailable(send, 502, "the upstream registry broke off the exchange", exc)
                return
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": whole, "more_body": False})
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if done is None:  # an upload still running: its end or its abort ends the stream
            await _stream(response, send)
            return
        failure: Exception | None = None
        async with anyio.create_task_group() as tasks:
            # Servers such as uvicorn silently drop sends to a closed connection;
            # only `receive` tells us, and then the upstream must stop too.
            tasks.start_soon(_cancel_on_disconnect, receive, tasks.cancel_scope, done)
            try:
                await _stream(response, send)
            except Exception as exc:  # re-raised below as itself, not as an ExceptionGroup
                failure = exc
            tasks.cancel_scope.cancel()
        if failure is not None:
            raise failure


async def _stream(response: Connection, send: Send) -> None:
    try:
        async for chunk in response.chunks():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except UpstreamError as exc:
        # Too late for a 502: leave the response incomplete so the server
        # closes the connection and the client sees a truncated body.
        log.warning("pullstats proxy: upstream response broke off (%r)", exc)
        return
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _unavailable(send: Send, status: int, message: str, exc: BaseException) -> None:
    log.warning("pullstats proxy: %s (%r)", message, exc)
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
        self.gone = False  # the client disconnected before the body ended

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while not self.done:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                raise ConnectionAbortedError("the client disconnected during its upload")
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
                # blocks. Nothing to watch; do not spin.
                return
            done = True


def proxy_app(
    upstream: str,
    *,
    connect_timeout: float = 5.0,
    read_timeout: float = 60.0,
    trusted_proxies: Sequence[IPNetwork] = (),
) -> RegistryProxy:
    """An ASGI app forwarding every request to `upstream` (`http(s)://host[:port]`);
    `trusted_proxies`: peers whose X-Forwarded-Proto and -Host it passes on."""
    return RegistryProxy(
        upstream,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        trusted_proxies=trusted_proxies,
    )
